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
fn lengths_of_every_width() {
    for size in [0, 1, 126, 127, 128, 200, 16_383, 16_384, 70_000, 2_100_000] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "x".repeat(size), "after": "y"}});
        let mut expected = cm.clone();
        if size == 0 {
            expected["data"]["k"] = json!("");
        }
        assert_eq!(round_trip(&cm), expected, "a value of {size} bytes");
    }
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
    let mut event = &frame[4..];
    assert_eq!(super::length_delimited(&mut event).unwrap(), (1, Some(b"ADDED".as_slice())));
    let (2, Some(mut raw_extension)) = super::length_delimited(&mut event).unwrap() else { panic!("no object") };
    let (1, Some(raw)) = super::length_delimited(&mut raw_extension).unwrap() else { panic!("no raw") };
    assert_eq!(decode(raw).unwrap(), pod);
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

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // ControllerRevision.data (a RawExtension) holding a ControllerRevision, and so on.
    let mut object = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"}, "revision": 1});
    let mut body = encode(&object).unwrap();
    for _ in 0..200 {
        object = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"}, "revision": 1});
        let mut wrapped = Vec::new();
        // Field 2 (data) of ControllerRevision: a RawExtension whose raw (1) is the body.
        let mut raw_extension = Vec::new();
        super::write_bytes(1, &body, &mut raw_extension);
        let inner = encode(&object).unwrap();
        let super::Envelope { raw, .. } = super::read_envelope(&inner[4..]).unwrap();
        let mut message = raw.to_vec();
        super::write_bytes(2, &raw_extension, &mut message);
        let mut type_meta = Vec::new();
        super::write_bytes(1, b"apps/v1", &mut type_meta);
        super::write_bytes(2, b"ControllerRevision", &mut type_meta);
        wrapped.extend_from_slice(MAGIC);
        super::write_bytes(1, &type_meta, &mut wrapped);
        super::write_bytes(2, &message, &mut wrapped);
        body = wrapped;
    }
    let err = decode(&body).unwrap_err().to_string();
    assert!(err.contains("nest deeper"), "{err}");
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
