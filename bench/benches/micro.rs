//! Micro-benchmarks of the per-request work: `find_by_tags` at 1k and 100k indexed connections
//! with the same number of matches, request parsing, and frame encoding.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use tagcast::envelope::encode_message_frame;
use tagcast::request::{parse_request, ParseOptions};
use tagcast::{Tags, TagsTree};

/// `n` keys in groups of 100: key i has {"g": i / 100, "user": i}.
fn tree(n: usize) -> TagsTree<usize> {
    let mut tree = TagsTree::new();
    for i in 0..n {
        tree.add(
            i,
            Tags::new()
                .with("g", (i / 100) as i64)
                .with("user", i as i64),
        );
    }
    tree
}

fn find_by_tags(c: &mut Criterion) {
    let mut group = c.benchmark_group("find_by_tags_100_matches");
    for n in [1_000usize, 100_000] {
        let tree = tree(n);
        let one = Tags::new().with("g", 7);
        let two = Tags::new().with("g", 7).with("user", 750);
        group.bench_with_input(BenchmarkId::new("one_tag", n), &tree, |b, tree| {
            b.iter(|| {
                let mut count = 0;
                tree.for_each_match(black_box(&one), |_| count += 1);
                assert_eq!(count, 100);
                count
            })
        });
        group.bench_with_input(BenchmarkId::new("two_tags", n), &tree, |b, tree| {
            b.iter(|| {
                let mut count = 0;
                tree.for_each_match(black_box(&two), |_| count += 1);
                count
            })
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let frame = r#"{"message":"Bonjour à tous, voici un message de 64 octets environ!","tags":{"language":"FR","user":42},"metadata":{"key":"application1"}}"#;
    let options = ParseOptions::default();
    c.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(frame), &options).1.unwrap())
    });
}

fn encoding(c: &mut Criterion) {
    let message =
        serde_json::Value::String("Bonjour à tous, voici un message de 64 octets environ!".into());
    let tags = Tags::new().with("language", "FR").with("user", 42);
    c.bench_function("encode_raw_and_envelope", |b| {
        b.iter(|| {
            let raw = serde_json::to_string(black_box(&message)).unwrap();
            let envelope = encode_message_frame(&raw, &tags.to_json(), None);
            (raw, envelope)
        })
    });
}

criterion_group!(benches, find_by_tags, parsing, encoding);
criterion_main!(benches);
