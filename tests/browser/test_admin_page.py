"""The admin allocations page in Chromium, served by DCloud's JupyterHub service: an admin
finds it in the hub's Services menu and logs in to it through the hub (OAuth), others get 403."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import login, shot

pytestmark = pytest.mark.browser


def test_admin_sees_allocations_and_a_student_is_refused(page, demo):
    status, _ = demo.api("POST", "/users/student/servers/held",
                         {"user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}}})
    assert status in (201, 202)
    demo.wait_ready("student", "held")
    try:
        login(page, demo, "admin")
        page.goto(f"{demo.url}/hub/home")
        # discoverable from the hub's own page: its Services menu links the service
        services = page.locator("a.dropdown-toggle", has_text="Services")
        services.click()
        page.locator(".dropdown-menu a", has_text="dcloud").click()
        page.wait_for_url("**/services/dcloud/")
        page.locator("#dcloud-index a", has_text="/services/dcloud/allocations").click()
        page.wait_for_url("**/services/dcloud/allocations")
        row = page.locator('#dcloud-by-class tr[data-class="t4"]')
        assert re.sub(r"\s+", " ", row.inner_text()).strip() == "NVIDIA T4 16GB 1 0 1"
        assert page.locator("#dcloud-by-user").inner_text().count("student") == 1
        assert "students" in page.locator("#dcloud-by-group").inner_text()
        assert page.locator("#dcloud-allocations svg rect").count() == 9
        assert page.locator("#dcloud-user").inner_text() == "admin"
        shot(page, "08-admin-allocations")
        page.goto(f"{demo.url}/hub/logout")

        login(page, demo, "student")
        page.goto(f"{demo.url}/hub/home")
        assert page.locator("a.dropdown-toggle", has_text="Services").count() == 0
        response = page.goto(f"{demo.url}/services/dcloud/allocations")
        assert response.status == 403
        assert "dcloud" in page.content()
    finally:
        demo.stop_server("student", "held")
