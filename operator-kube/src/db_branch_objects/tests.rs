use super::*;
use remora_operator::branches::source::Server;

fn stored() -> StoredBranch {
    let server = Server {
        kind: DbKind::Postgres,
        host: "pg.default.svc.cluster.local".into(),
        port: 5432,
        user: "app".into(),
        password: Some("s3cret".into()),
    };
    let branch = "remora_shop_alice_k8s";
    StoredBranch {
        key: remora_operator::branches::store::key(branch, &server),
        record: BranchRecord {
            info: BranchInfo {
                id: "alice-k8s".into(),
                kind: DbKind::Postgres,
                source: "shop".into(),
                branch: branch.into(),
                mode: CopyMode::Schema,
                owner: "alice".into(),
                target: "namespace/default/deployment/shop".into(),
                created_at: 1_796_392_800,
                expires_at: 1_796_393_400,
                method: "pg_dump --schema-only | psql".into(),
            },
            golden: false,
            ready: true,
            dir: None,
            pod: None,
            server: "pg.default.svc.cluster.local:5432".into(),
        },
        secret: BranchSecret {
            server,
            env: BTreeMap::from([(
                "DATABASE_URL".into(),
                "postgres://app:s3cret@pg.default.svc.cluster.local:5432/remora_shop_alice_k8s"
                    .into(),
            )]),
        },
    }
}

#[test]
fn an_object_shows_the_branch_and_gives_back_its_record_without_credentials() {
    let s = stored();
    let object = object(&s.key, &s.record);
    assert_eq!(object.metadata.name.as_deref(), Some(s.key.as_str()));
    assert_eq!(object.spec.expires_at, "2026-12-04T14:10:00Z");
    assert_eq!(object.spec.type_, DbBranchType::Postgres);
    assert_eq!(record(&object).unwrap(), s.record);
    let json = serde_json::to_string(&object).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    assert!(json.contains(r#""type":"postgres""#), "{json}");
}

#[test]
fn the_secret_holds_the_credentials_and_is_owned_by_the_object() {
    let s = stored();
    let mut owner = object(&s.key, &s.record);
    owner.metadata.uid = Some("uid-1".into());
    let secret = secret(&s.key, &owner, &s.secret);
    let refs = secret.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].uid, "uid-1");
    assert_eq!(refs[0].kind, "RemoraDbBranch");
    assert_eq!(refs[0].api_version, "remora.dev/v1alpha1");
    assert_eq!(secret.immutable, Some(true));
    let data = &secret.data.unwrap()[SECRET_KEY];
    let back: BranchSecret = serde_json::from_slice(&data.0).unwrap();
    assert_eq!(back, s.secret);
}

#[test]
fn keys_are_object_names_and_differ_by_server() {
    let s = stored();
    let key = &s.key;
    assert!(key.len() <= 63, "{key}");
    assert!(key.starts_with("remora-shop-alice-k8s-"), "{key}");
    assert!(
        key.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{key}"
    );
    let other = Server {
        port: 5433,
        ..s.secret.server.clone()
    };
    let long = "remora_".to_owned() + &"x_".repeat(40);
    let long_key = remora_operator::branches::store::key(&long, &other);
    assert!(
        long_key.len() <= 63 && !long_key.contains("--"),
        "{long_key}"
    );
    assert_ne!(
        remora_operator::branches::store::key(&s.record.info.branch, &other),
        *key
    );
}
