//! The in-process decision (parse → hash → index lookup → state → scopes → count) at
//! 1,000 and 1,000,000 keys. Target: under 1 µs median for a valid key.
//!
//! Run: `cargo bench -p keygate-core --bench decision`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keygate_core::usage::UsageLedger;
use keygate_core::{Check, KeyIndex, KeyOrigin, KeyRecord, decide, key_format};
use std::hint::black_box;
use uuid::Uuid;

const NOW: i64 = 1_800_000_000_000;

fn secret(n: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // Spread n over the bytes so keys differ early (as random keys do).
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(i as u32 * 16))
            .to_be_bytes(),
        );
    }
    bytes
}

fn index_of(size: u64) -> (KeyIndex, String) {
    let mut probe = String::new();
    let records = (0..size).map(|n| {
        let key = key_format::format_key("kg", &secret(n)).expect("valid prefix");
        let record = KeyRecord {
            id: Uuid::from_u64_pair(0, n),
            hash: key_format::hash_key(&key),
            start: key[..7].to_string(),
            name: format!("key {n}"),
            scopes: vec!["read".into(), "files:*".into()],
            meta: Default::default(),
            enabled: true,
            origin: KeyOrigin::Generated,
            global: false,
            owner: None,
            plan: None,
            limits: Default::default(),
            allowed_cidrs: Vec::new(),
            project: None,
            created_at: NOW,
            updated_at: NOW,
            expires_at: Some(NOW * 2),
            revoked_at: None,
            rotated_to: None,
            last_used_at: None,
            usage_count: 0,
        };
        if n == size / 2 {
            probe = key;
        }
        record
    });
    let index = KeyIndex::from_records(records.collect::<Vec<_>>());
    (index, probe)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for size in [1_000u64, 1_000_000] {
        let (index, valid) = index_of(size);
        let unknown = key_format::format_key("kg", &secret(size + 7)).expect("valid prefix");
        let mut malformed = valid.clone();
        let last = malformed.pop();
        malformed.push(if last == Some('0') { '1' } else { '0' });
        let ledger = UsageLedger::default();
        let scopes = ["files:read"];
        group.bench_with_input(
            BenchmarkId::new("valid_and_counted", size),
            &valid,
            |b, key| {
                b.iter(|| {
                    let decision = decide(
                        &index,
                        &Check {
                            credential: black_box(key),
                            trimmed: false,
                            required_scopes: &scopes,
                            now: NOW,
                            client_ip: None,
                            project: None,
                            project_required: false,
                            route_limits: None,
                        },
                    );
                    if let Some(k) = &decision.key {
                        ledger.record(k.record.id, &k.usage, NOW);
                    }
                    decision.code
                });
                // Keep the queue from growing across iterations of the measurement.
                ledger.drain();
            },
        );
        group.bench_with_input(BenchmarkId::new("not_found", size), &unknown, |b, key| {
            b.iter(|| {
                decide(
                    &index,
                    &Check {
                        credential: black_box(key),
                        trimmed: false,
                        required_scopes: &[] as &[&str],
                        now: NOW,
                        client_ip: None,
                        project: None,
                        project_required: false,
                        route_limits: None,
                    },
                )
                .code
            })
        });
        group.bench_with_input(
            BenchmarkId::new("bad_checksum", size),
            &malformed,
            |b, key| {
                b.iter(|| {
                    decide(
                        &index,
                        &Check {
                            credential: black_box(key),
                            trimmed: false,
                            required_scopes: &[] as &[&str],
                            now: NOW,
                            client_ip: None,
                            project: None,
                            project_required: false,
                            route_limits: None,
                        },
                    )
                    .code
                })
            },
        );
    }
    group.finish();

    // The limiter's cost: the same key with and without two rate limits and a quota (set
    // high enough never to refuse), in one run so the ratio is fair.
    let mut group = c.benchmark_group("limiter");
    let (mut index, valid) = index_of(1_000);
    let plan = uuid::Uuid::from_u64_pair(7, 7);
    index.set_plan(
        plan,
        Some(keygate_core::limit::Limits {
            rate_limits: vec![
                keygate_core::limit::RateLimit {
                    limit: u32::MAX,
                    period_seconds: 1,
                    burst: None,
                },
                keygate_core::limit::RateLimit {
                    limit: u32::MAX,
                    period_seconds: 86_400,
                    burst: None,
                },
            ],
            monthly_quota: Some(u64::MAX),
            overage: keygate_core::limit::Overage::Block,
        }),
    );
    let unlimited = index
        .get_by_hash(&key_format::hash_key(&valid))
        .expect("probe")
        .record
        .clone();
    let mut limited = unlimited.clone();
    limited.id = Uuid::from_u64_pair(8, 8);
    limited.plan = Some(plan);
    let limited_key = key_format::format_key("kg", &secret(u64::MAX)).expect("key");
    limited.hash = key_format::hash_key(&limited_key);
    index.upsert(limited);
    for (name, key) in [
        ("without_limits", &valid),
        ("with_two_limits_and_quota", &limited_key),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                decide(
                    &index,
                    &Check {
                        credential: black_box(key),
                        trimmed: false,
                        required_scopes: &[] as &[&str],
                        now: NOW,
                        client_ip: None,
                        project: None,
                        project_required: false,
                        route_limits: None,
                    },
                )
                .code
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
