//! `connectors/README.md` quotes this crate: every `rust` and `json` block of the guide must be
//! a verbatim excerpt (consecutive non-blank lines) of a source file, so the guide cannot drift
//! from the code.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "json") {
            out.push(path);
        }
    }
}

fn non_blank(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn every_code_excerpt_of_the_guide_is_in_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let mut files = Vec::new();
    for dir in ["src", "tests"] {
        sources(&root.join(dir), &mut files);
    }
    files.push(root.join("component.json"));
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();

    let mut excerpts = 0;
    let mut blocks = guide.split("```").skip(1).step_by(2);
    for block in blocks.by_ref() {
        let (lang, code) = block.split_once('\n').unwrap_or((block, ""));
        if lang != "rust" && lang != "json" {
            continue;
        }
        excerpts += 1;
        let wanted = non_blank(code);
        let found = files.iter().any(|(_, text)| {
            let lines = non_blank(text);
            lines.windows(wanted.len()).any(|w| w == wanted.as_slice())
        });
        assert!(
            found,
            "this excerpt of the guide is not in the code:\n{code}"
        );
    }
    assert!(excerpts >= 10, "only {excerpts} excerpts found");
}
