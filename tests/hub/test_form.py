import re

import pytest
from tornado.httputil import HTTPFile

from dcloud_spawner.core.availability import GpuAvailability
from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.hub.form import FormContext, render_form, request_from_form, uploaded_options

LABELS = ["Environment", "GPU type", "GPU count", "CPU cores", "Memory", "Datasets",
          "Extra packages", "Configuration file"]


def form_for(catalog, groups, options=None, context=None):
    return render_form(catalog, catalog.allowance(groups), options, context)


def option_values(html, name):
    select = re.search(rf'<select[^>]*name="{name}".*?</select>', html, re.S).group(0)
    return re.findall(r'<option value="([^"]*)"', select)


def test_every_control_has_a_visible_label(catalog):
    html = form_for(catalog, ["students"])
    for label in LABELS:
        assert re.search(rf">\s*{re.escape(label)}\s*</(label|legend)>", html), label
    for control_id in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html):
        assert f'for="{control_id}"' in html, control_id


def test_student_sees_only_t4_and_public_datasets(catalog):
    html = form_for(catalog, ["students"])
    assert option_values(html, "gpu_type") == ["", "t4"]
    assert 'value="medical-scans"' not in html
    assert re.findall(r'name="datasets" value="([^"]+)"', html) == ["imagenet", "coco"]
    assert 'max="4"' in html  # CPU max for students


def test_guest_sees_no_gpu_choice(catalog):
    html = form_for(catalog, [])
    assert option_values(html, "gpu_type") == [""]
    assert "GPUs are not available to your groups" in html
    assert re.search(r'<select[^>]*name="gpu_type"[^>]*disabled', html)


def test_researcher_in_medical_sees_everything(catalog):
    html = form_for(catalog, ["researchers", "medical"])
    assert option_values(html, "gpu_type") == ["", "a100", "t4", "a100-mig-1g"]
    assert 'value="medical-scans"' in html


def test_kept_choices_are_preselected(catalog):
    options = {"environment": "tensorflow", "gpu": {"type": "t4", "count": 1}, "cpu": "3",
               "memory": "12Gi", "datasets": ["coco"], "packages": ["timm>=1.0", "rich"]}
    html = form_for(catalog, ["students"], options)
    assert re.search(r'<option value="tensorflow"[^>]*selected', html)
    assert re.search(r'<option value="t4"[^>]*selected', html)
    assert 'name="cpu"' in html and 'value="3"' in html
    assert 'value="12Gi"' in html
    assert re.search(r'value="coco"\s+id="dcloud-dataset-coco" checked', html)
    assert "timm&gt;=1.0\nrich</textarea>" in html


def test_catalog_and_user_text_is_escaped(catalog):
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>{{7*7}}'
    data = catalog.model_dump()
    data["environments"][0]["description"] = hostile
    from dcloud_spawner.core.catalog import Catalog

    evil = Catalog.from_data(data)
    html = render_form(evil, evil.allowance([]), {"memory": hostile, "packages": [hostile]})
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "{{7*7}}" in html  # not evaluated as a template


def test_availability_is_shown_and_full_classes_marked(catalog):
    context = FormContext(availability={
        "a100": GpuAvailability(free=3, total=16, largest_free_block=2),
        "t4": GpuAvailability(free=0, total=8, largest_free_block=0),
        "a100-mig-1g": GpuAvailability(free=0, total=0),
    })
    html = form_for(catalog, ["researchers"], context=context)
    assert "3 of 16 free" in html and "0 of 8 free" in html
    assert re.search(r'value="a100-mig-1g"[^>]*disabled>A100 slice \(MIG 1g.10gb\) · none here</option>', html)
    assert "at most 2 fit on one node" in html
    assert "none free right now" in html


def test_request_from_form_fields():
    request = request_from_form({
        "environment": ["pytorch"], "gpu_type": ["t4"], "gpu_count": ["1"], "cpu": ["2"],
        "memory": ["8Gi"], "datasets": ["imagenet", "coco"], "packages": ["timm>=1.0\r\n\r\nrich"],
    })
    assert request == {"environment": "pytorch", "gpu": {"type": "t4", "count": "1"}, "cpu": "2",
                       "memory": "8Gi", "datasets": ["imagenet", "coco"],
                       "packages": ["timm>=1.0", "rich"]}


def test_no_gpu_type_means_cpu_only():
    assert "gpu" not in request_from_form({"gpu_type": [""], "gpu_count": ["3"]})


def test_uploaded_file_is_parsed_and_bytes_dropped():
    upload = HTTPFile(filename="me.yaml", body=b"environment: scipy\ncpu: 1\n", content_type="text/yaml")
    assert uploaded_options({"config_file": [upload]}) == {"environment": "scipy", "cpu": 1}
    assert uploaded_options({"config_file": [HTTPFile(filename="", body=b"", content_type="")]}) == {}


def test_bad_upload_names_the_file():
    upload = HTTPFile(filename="me.yaml", body=b"a: &x 1\nb: *x\n", content_type="text/yaml")
    with pytest.raises(RequestError, match="Configuration file was refused"):
        uploaded_options({"config_file": [upload]})
