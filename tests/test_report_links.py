"""The dashboard's report links what it names: on S3 through presigned URLs a browser opens without
credentials (checked against moto's S3 server); local files stay paths."""

from __future__ import annotations

import urllib.request

from flows import report as report_mod, storage


def a_report(output: str) -> dict:
    pairs = [
        {"id": "a-style", "status": "completed", "outputs": {"image": f"{output}/a-style/stylized.png"}},
        {"id": "b-style", "status": "skipped", "outputs": {"image": f"{output}/b-style/stylized.png"}},
        {"id": "c-style", "status": "failed", "error": "c.png: not an image", "outputs": {}},
    ]
    run = f"{output}/_runs/job-1"
    return {
        "run_name": "job-1", "manifest": "job.yaml", "output": output, "report": f"{run}/report.json",
        "contact_sheet": f"{run}/contact_sheet.png", "seconds": 1.0, "pairs": pairs,
        "counts": report_mod.summary_counts(pairs), "device_seconds": {},
    }


def test_on_s3_the_report_links_its_files_and_each_result(s3_bucket):
    report = a_report(f"s3://{s3_bucket}/out")
    files = {report["report"]: b'{"pairs": []}', report["contact_sheet"]: b"sheet", **{
        p["outputs"]["image"]: p["id"].encode() for p in report["pairs"] if p["outputs"]
    }}
    for uri, data in files.items():
        storage.write_bytes(uri, data)
    links = report_mod.links_for(report)
    assert set(links.pictures) == {"a-style", "b-style"}  # a failed pair has no picture
    for uri, url in [(report["report"], links.report), (report["contact_sheet"], links.contact_sheet)] + [
        (f"s3://{s3_bucket}/out/{pair}/stylized.png", url) for pair, url in links.pictures.items()
    ]:
        assert "Signature" in url or "X-Amz-Signature" in url
        with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the URL is the permission
            assert response.read() == files[uri]
    text = report_mod.markdown(report, links)
    assert f"[report.json]({links.report})" in text and f"![contact sheet]({links.contact_sheet})" in text
    assert f"| a-style | ![a-style]({links.pictures['a-style']}) |" in text


def test_local_files_are_named_not_linked(tmp_path):
    report = a_report(str(tmp_path / "out"))
    links = report_mod.links_for(report)
    assert links == report_mod.Links()
    text = report_mod.markdown(report, links)
    assert f"Report: `{report['report']}`" in text and "](" not in text
