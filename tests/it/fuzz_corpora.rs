//! Replays every saved fuzz input (`fuzz/corpus/<target>/`, and any crash reproducer under
//! `fuzz/artifacts/<target>/`) through the same target bodies the fuzzers run
//! (`tokengate::fuzzing`), on stable: a finding, once fixed and saved, stays fixed.

use std::path::Path;

#[test]
fn every_saved_fuzz_input_still_holds_its_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in tokengate::fuzzing::TARGETS {
        let mut replayed = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                // A fuzzer running meanwhile replaces corpus files as it minimises them.
                let Ok(data) = std::fs::read(&path) else {
                    continue;
                };
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "{name} has a corpus");
    }
}
