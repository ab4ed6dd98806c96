use proptest::prelude::*;
use serde_json::{Value, json};

use super::{DecodeError, MAGIC, decode, encode, encode_watch_event};

fn round_trip(object: &Value) -> Value {
    decode(&encode(object).expect("encodes")).expect("decodes")
}

#[test]
fn deployment_round_trips_field_for_field() {
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "1f0e", "resourceVersion": "42", "generation": 3,
            "labels": {"app": "web"}, "annotations": {"note": ""},
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u", "controller": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                "time": "2026-01-02T03:04:05Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "registry.skiff.internal/http-hello:v1", "args": ["", "x"],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "1"}},
                    "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                    "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
                    "volumes": [{"name": "v", "configMap": {"name": "cm", "optional": false}}, {"name": "e", "emptyDir": {}}],
                    "terminationGracePeriodSeconds": 0}}},
        "status": {"conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-01-02T03:04:05Z"}]},
    });
    assert_eq!(round_trip(&d), d);
}

#[test]
fn inline_structs_join_their_parent() {
    let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
        "spec": {"rules": [{"host": "foo.com", "http": {"paths": [{"path": "/bar", "pathType": "Exact",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
    assert_eq!(round_trip(&ing), ing);
}

#[test]
fn go_zero_values_read_as_unset() {
    // What client-go writes for an empty string, a zero port and a zero time: present on
    // the wire, absent in Go's JSON.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "generateName": "", "creationTimestamp": null},
        "spec": {"ports": [{"port": 80, "targetPort": 0, "nodePort": 0, "protocol": ""}], "type": ""}});
    let back = round_trip(&svc);
    assert_eq!(back, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}));
}

#[test]
fn bytes_times_and_wrappers() {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
        "data": {"k": "aGVsbG8=", "empty": ""}, "stringData": {"a": "b"}});
    assert_eq!(round_trip(&secret), secret);
    let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "d"},
        "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "eventTime": "2026-01-02T03:04:05.123456Z"});
    assert_eq!(round_trip(&event), event);
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
        "spec": {"user": "u", "extra": {"scopes": ["a", "b"]}, "resourceAttributes": {"verb": "get", "resource": "pods"}}});
    assert_eq!(round_trip(&review), review);
}

#[test]
fn lists_and_status_have_protobuf_forms() {
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7", "continue": "abc"},
        "items": [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]});
    let back = round_trip(&list);
    assert_eq!(back["items"], json!([{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]));
    assert_eq!(back["metadata"], list["metadata"]);
    let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404,
        "message": "pods \"x\" not found", "details": {"name": "x", "kind": "pods"}});
    assert_eq!(round_trip(&status), status);
    let opts = json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground", "gracePeriodSeconds": 0});
    assert_eq!(round_trip(&opts), opts);
}

#[test]
fn watch_frames_are_length_prefixed_events() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "resourceVersion": "9"}});
    let frame = encode_watch_event("ADDED", &pod).unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    let event = prost_reflect::DynamicMessage::decode(super::meta_message("WatchEvent"), &frame[4..]).unwrap();
    assert_eq!(event.get_field_by_name("type").unwrap().as_str(), Some("ADDED"));
    let raw = event.get_field_by_name("object").unwrap().as_message().unwrap().get_field_by_name("raw").unwrap().as_bytes().unwrap().clone();
    assert_eq!(decode(&raw).unwrap(), pod);
}

#[test]
fn bad_bodies_are_clear_errors() {
    assert!(matches!(decode(b"{\"kind\":\"Pod\"}"), Err(DecodeError::NoEnvelope)));
    let good = encode(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})).unwrap();
    assert!(decode(&good[..good.len() - 3]).is_err(), "a truncated body");
    let widget = encode(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})).unwrap();
    let renamed: Vec<u8> = String::from_utf8_lossy(&widget).replace("ConfigMap", "WidgetMap").into_bytes();
    assert!(matches!(decode(&renamed), Err(DecodeError::UnknownKind { .. })));
    assert!(encode(&json!({"apiVersion": "v1", "kind": "Pod", "spec": {"noSuchField": 1}})).is_err());
    assert!(encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut enveloped = MAGIC.to_vec();
        enveloped.extend_from_slice(&body);
        let _ = decode(&enveloped);
        let _ = decode(&body);
    }

    #[test]
    fn config_maps_round_trip(data in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}", 0..6), name in "[a-z]{1,12}") {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
        let expected = if data.is_empty() { json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}) } else { cm.clone() };
        prop_assert_eq!(round_trip(&cm), expected);
    }
}
