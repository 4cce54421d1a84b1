module dcloud.test/pause

go 1.22
