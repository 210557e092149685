//! Replays every committed corpus file (`fuzz/corpus/<target>/*`) through its target's body, on
//! stable Rust and without libFuzzer: what `cargo xtask test` runs. A target with no corpus
//! fails, so that a target added without one cannot pass by checking nothing.

use std::path::PathBuf;

#[test]
fn every_target_passes_over_its_committed_corpus() {
    let corpus_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, body) in livevote_fuzz::TARGETS {
        let folder = corpus_root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap_or_else(|error| panic!("reading {}: {error}", folder.display()))
            .map(|entry| entry.expect("a readable corpus entry").path())
            .collect();
        // Sorted, so that a failure names the same file on every run.
        files.sort();
        assert!(!files.is_empty(), "{name} has no committed corpus");
        for file in &files {
            let data = std::fs::read(file)
                .unwrap_or_else(|error| panic!("reading {}: {error}", file.display()));
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                std::panic::resume_unwind(Box::new(format!(
                    "{name} failed on {}: {:?}",
                    file.display(),
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                )));
            }
        }
        println!("{name}: {} corpus files", files.len());
    }
}
