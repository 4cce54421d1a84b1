"""The admin allocations page in Chromium: admins see it, others get 403."""

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
        page.goto(f"{demo.url}/hub/dcloud/allocations")
        row = page.locator('#dcloud-by-class tr[data-class="t4"]')
        assert re.sub(r"\s+", " ", row.inner_text()).strip() == "NVIDIA T4 16GB 1 0 1"
        assert page.locator("#dcloud-by-user").inner_text().count("student") == 1
        assert "students" in page.locator("#dcloud-by-group").inner_text()
        assert page.locator("#dcloud-allocations svg rect").count() == 9
        shot(page, "08-admin-allocations")
        page.goto(f"{demo.url}/hub/logout")

        login(page, demo, "student")
        response = page.goto(f"{demo.url}/hub/dcloud/allocations")
        assert response.status == 403
    finally:
        demo.stop_server("student", "held")
