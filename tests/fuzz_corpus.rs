//! Replays the checked-in fuzz corpus (fuzz/corpus, grown by `scripts/fuzz`)
//! through the fuzz harness: every input that ever found new coverage stays
//! a regression test of token decoding and request validation.

#[test]
fn every_corpus_input_runs_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| hourglass::fuzzing::check(&data));
        assert!(outcome.is_ok(), "{} panics", path.display());
        n += 1;
    }
    assert!(
        n >= 100,
        "the corpus holds {n} inputs; expected the checked-in corpus"
    );
}
