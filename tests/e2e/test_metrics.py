"""The API server's Prometheus metrics at /metrics, read as Prometheus reads them: the
text parsed by Prometheus' own Python parser (prometheus_client's OpenMetrics parser),
kube-apiserver's names, values that move when work happens, and RBAC on the path."""

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import wait_for


def scrape(cluster, token=None):
    """(status, {family name: family}) of /metrics."""
    status, text = cluster.raw("GET", "/metrics", token=token)
    if status != 200:
        return status, {}
    return status, {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, sample, **labels):
    return sum(s.value for s in families[family].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_api_requests_are_counted_under_kubernetes_names(cluster, namespace):
    status, before = scrape(cluster)
    assert status == 200
    for name, kind in [("apiserver_request", "counter"), ("apiserver_request_duration_seconds", "histogram"), ("apiserver_longrunning_requests", "gauge")]:
        assert before[name].type == kind, before[name]
    created = dict(verb="CREATE", group="", version="v1", resource="configmaps", scope="namespace", code="201")
    count = value(before, "apiserver_request", "apiserver_request_total", **created)
    cluster.kubectl("create", "configmap", "counted", "--from-literal=k=v", "-n", namespace)
    cluster.kubectl("get", "configmap", "nothing-here", "-n", namespace, check=False)
    _, after = scrape(cluster)
    assert value(after, "apiserver_request", "apiserver_request_total", **created) >= count + 1
    assert value(after, "apiserver_request", "apiserver_request_total", verb="GET", resource="configmaps", scope="resource", code="404") >= 1
    observed = value(after, "apiserver_request_duration_seconds", "apiserver_request_duration_seconds_count", verb="CREATE", resource="configmaps")
    assert observed >= count + 1
    # The cluster's own parts hold watches open all the time.
    assert value(after, "apiserver_longrunning_requests", "apiserver_longrunning_requests", verb="WATCH") >= 1


def test_metrics_need_the_right_to_read_them(cluster, namespace):
    assert scrape(cluster, token="not-a-token")[0] == 401
    cluster.kubectl("create", "serviceaccount", "scraper", "-n", namespace)
    token = cluster.kubectl("create", "token", "scraper", "-n", namespace).stdout.strip()
    assert scrape(cluster, token=token)[0] == 403
    cluster.kubectl("create", "clusterrolebinding", f"scraper-{namespace}", "--clusterrole=system:monitoring", f"--serviceaccount={namespace}:scraper")
    try:
        wait_for(lambda: scrape(cluster, token=token)[0] == 200, 30, "the scraper's binding to take effect")
        _, families = scrape(cluster, token=token)
        # Refusals are counted too.
        assert value(families, "apiserver_request", "apiserver_request_total", verb="GET", code="403") >= 1
    finally:
        cluster.kubectl("delete", "clusterrolebinding", f"scraper-{namespace}")
