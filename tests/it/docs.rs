//! Issue 15: the docs hold together. A deleted example went unnoticed once
//! (`examples/github-actions/deploy.yml`, linked from the README); now every relative link in
//! README.md and docs/*.md must reach a file of this repository (and, with `#anchor`, a heading
//! of the markdown file it names, slugged as GitHub slugs it), every workflow and example
//! YAML must parse, and so must the `packaging/` JSON. Files only: no network, no server, nothing built.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `path` relative to the repository root, with `/`, for messages.
fn rel(path: &Path) -> String {
    let r = path.strip_prefix(root()).unwrap_or(path);
    r.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel(path)))
}

/// The files in `dir` (recursively or not) whose names end with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str], recursive: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            if recursive {
                out.extend(files(&path, exts, true));
            }
        } else if path.extension().and_then(|x| x.to_str()).is_some_and(|x| exts.contains(&x)) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The markdown files whose links are checked: README.md and docs/*.md.
fn markdown_files() -> Vec<PathBuf> {
    let mut md = vec![root().join("README.md")];
    md.extend(files(&root().join("docs"), &["md"], false));
    md
}

/// One link as written: the 1-based line it starts on, and its destination.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    dest: String,
}

/// An opening or closing code fence (up to three spaces, then three or more backticks or
/// tildes): the fence character and the run's length.
fn fence(line: &str) -> Option<(char, usize)> {
    let t = line.trim_start_matches(' ');
    if line.len() - t.len() > 3 {
        return None;
    }
    let c = t.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = t.chars().take_while(|x| *x == c).count();
    (n >= 3).then_some((c, n))
}

/// The lines of `md` with their 1-based numbers, each line of a fenced code block (fences
/// included) read as a blank line: nothing in it is a link or a heading, and it ends the
/// paragraph before it. A fence that is never closed runs to the end of the file, as
/// CommonMark reads it.
fn prose_lines(md: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut open: Option<(char, usize)> = None;
    for (i, line) in md.lines().enumerate() {
        let prose = match (open, fence(line)) {
            (None, Some(f)) => {
                open = Some(f);
                false
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && line.trim().chars().all(|x| x == c) => {
                open = None;
                false
            }
            (None, None) => true,
            _ => false,
        };
        out.push((i + 1, if prose { line } else { "" }));
    }
    out
}

/// `text` with inline code spans blanked (their characters, backticks included, become spaces,
/// so byte offsets and line breaks stay). A backtick run that is never closed is literal.
fn blank_code_spans(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'`' {
            i += 1;
            continue;
        }
        let n = b[i..].iter().take_while(|c| **c == b'`').count();
        // The closing run: exactly n backticks.
        let mut j = i + n;
        let mut close = None;
        while j < b.len() {
            if b[j] == b'`' {
                let m = b[j..].iter().take_while(|c| **c == b'`').count();
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut out[i..j + n] {
                    if *c != b'\n' {
                        *c = b' ';
                    }
                }
                i = j + n;
            }
            None => i += n,
        }
    }
    // Only ASCII bytes were replaced, by ASCII, and only whole runs from one backtick to
    // another, so the text is still UTF-8.
    String::from_utf8(out).expect("blanking code spans keeps UTF-8")
}

/// Every inline link and image (`[text](dest)`, `[text](dest "title")`, `[text](<dest>)`) and
/// every reference definition (`[label]: dest`) outside code, in file order.
fn links(md: &str) -> Vec<Link> {
    let mut out = Vec::new();
    // Code spans do not cross paragraphs: blank them paragraph by paragraph.
    let mut para: Vec<(usize, &str)> = Vec::new();
    let mut paragraphs = Vec::new();
    for (n, line) in prose_lines(md) {
        if line.trim().is_empty() {
            paragraphs.push(std::mem::take(&mut para));
        } else {
            para.push((n, line));
        }
    }
    paragraphs.push(para);
    for para in paragraphs.iter().filter(|p| !p.is_empty()) {
        let text = para.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
        let text = blank_code_spans(&text);
        let line_at = |offset: usize| para[0].0 + text[..offset].matches('\n').count();
        for (offset, _) in text.match_indices("](") {
            let start = offset + 2;
            let rest = &text[start..];
            let dest = if let Some(r) = rest.strip_prefix('<') {
                r.split('>').next().unwrap_or("")
            } else {
                // Up to the `)` that closes the link (balanced parentheses allowed), or a title.
                let mut depth = 0usize;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| match c {
                        '(' => {
                            depth += 1;
                            false
                        }
                        ')' if depth == 0 => true,
                        ')' => {
                            depth -= 1;
                            false
                        }
                        c => c.is_whitespace(),
                    })
                    .map_or(rest.len(), |(i, _)| i);
                &rest[..end]
            };
            out.push(Link { line: line_at(start), dest: dest.to_string() });
        }
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start_matches(' ');
            if line.len() - t.len() > 3 || !t.starts_with('[') {
                continue;
            }
            if let Some((label, rest)) = t[1..].split_once("]:") {
                if !label.is_empty() && !label.contains(']') {
                    if let Some(dest) = rest.split_whitespace().next() {
                        let dest = dest.trim_start_matches('<').trim_end_matches('>');
                        out.push(Link { line: para[0].0 + i, dest: dest.to_string() });
                    }
                }
            }
        }
    }
    out.sort_by_key(|l| l.line);
    out
}

/// GitHub's anchor for a heading: its text lowercased, every character that is not a letter,
/// a digit, a space, `-` or `_` dropped, and each space turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A heading's text as GitHub renders it, before slugging: code spans and emphasis lose their
/// markers, links keep their text.
fn heading_text(raw: &str) -> String {
    let mut s = String::new();
    let mut rest = raw;
    // `[text](dest)` → `text`.
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").map(|m| open + m) {
            Some(mid) if rest[mid..].contains(')') => {
                s.push_str(&rest[..open]);
                s.push_str(&rest[open + 1..mid]);
                let close = mid + rest[mid..].find(')').unwrap();
                rest = &rest[close + 1..];
            }
            _ => {
                s.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    s.push_str(rest);
    s.replace(['`', '*'], "").trim().to_string()
}

/// Every anchor a markdown file offers: its headings' slugs (ATX `# …` and setext underlines;
/// a repeated slug gets `-1`, `-2`, … as on GitHub), and `id`/`name` attributes of HTML tags.
fn anchors(md: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut add = |text: &str, out: &mut Vec<String>| {
        let base = slug(&heading_text(text));
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    };
    let lines = prose_lines(md);
    for (i, &(_, line)) in lines.iter().enumerate() {
        let t = line.trim_start_matches(' ');
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if line.len() - t.len() <= 3 && (1..=6).contains(&hashes) && (t.len() == hashes || t[hashes..].starts_with([' ', '\t'])) {
            // A closing run of `#`s (after a space, or alone) is not part of the text.
            let mut text = t[hashes..].trim();
            let open = text.trim_end_matches('#');
            if open.is_empty() || open.ends_with([' ', '\t']) {
                text = open.trim_end();
            }
            add(text, &mut out);
            continue;
        }
        // Setext: a line of `=` or `-` right under a line of paragraph text.
        let under = line.trim();
        if !under.is_empty() && (under.chars().all(|c| c == '=') || under.chars().all(|c| c == '-')) && i > 0 {
            let p = lines[i - 1].1.trim_start();
            let paragraph_text = !p.is_empty()
                && !p.starts_with(['#', '>', '|', '-', '*', '+'])
                && !p.contains('|')
                && !p.chars().next().is_some_and(|c| c.is_ascii_digit());
            if paragraph_text {
                add(p, &mut out);
            }
        }
        for attr in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(attr) {
                if line[..at].contains('<') {
                    let v = &line[at + attr.len()..];
                    out.push(v.split('"').next().unwrap_or("").to_string());
                }
            }
        }
    }
    out
}

/// `%20` and the like, as a browser decodes a link before fetching it.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if let Some(v) = (b[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok()) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `base/rel` with `.` and `..` resolved lexically; `None` when it climbs above the filesystem root.
fn join_lexically(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Why the link `dest`, written in `from`, does not resolve; `None` when it does (or is not a
/// relative link: http(s) and mailto are not checked).
fn broken(from: &Path, dest: &str) -> Option<String> {
    let lower = dest.to_ascii_lowercase();
    if ["http://", "https://", "mailto:"].iter().any(|p| lower.starts_with(p)) {
        return None;
    }
    if dest.is_empty() {
        return Some("the link has no destination".into());
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((p, a)) => (p, Some(percent_decode(a))),
        None => (dest, None),
    };
    let path = percent_decode(path);
    let target = if path.is_empty() {
        from.to_path_buf()
    } else if path.starts_with('/') {
        // GitHub reads `/x` as the repository root's `x`.
        match join_lexically(root(), path.trim_start_matches('/')) {
            Some(t) => t,
            None => return Some(format!("`{path}` climbs out of the repository")),
        }
    } else {
        match join_lexically(from.parent().unwrap(), &path) {
            Some(t) => t,
            None => return Some(format!("`{path}` climbs out of the repository")),
        }
    };
    if !target.starts_with(root()) {
        return Some(format!("`{path}` points outside the repository"));
    }
    if !target.exists() {
        return Some(format!("{} does not exist", rel(&target)));
    }
    let anchor = anchor?;
    if target.is_dir() {
        return Some(format!("#{anchor}: {} is a directory, which has no anchors", rel(&target)));
    }
    let text = read(&target);
    if target.extension().is_some_and(|x| x == "md") {
        let offered = anchors(&text);
        if offered.contains(&anchor) {
            return None;
        }
        let near: Vec<&String> = offered.iter().filter(|a| a.contains(&anchor) || anchor.contains(a.as_str())).collect();
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(" (close: {})", near.iter().map(|a| format!("#{a}")).collect::<Vec<_>>().join(", "))
        };
        return Some(format!("#{anchor} matches no heading in {}{hint}", rel(&target)));
    }
    // GitHub's line anchors on other files: #L12 or #L12-L20, within the file.
    let lines = text.lines().count();
    let line_no = |s: &str| s.strip_prefix('L').and_then(|n| n.parse::<usize>().ok()).filter(|n| (1..=lines).contains(n));
    let ok = match anchor.split_once('-') {
        Some((a, b)) => line_no(a).is_some() && line_no(b).is_some(),
        None => line_no(&anchor).is_some(),
    };
    if ok {
        None
    } else {
        Some(format!("#{anchor}: {} is not markdown, and it is not a line anchor (#L1 to #L{lines})", rel(&target)))
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for md in markdown_files() {
        for link in links(&read(&md)) {
            checked += 1;
            if let Some(why) = broken(&md, &link.dest) {
                problems.push(format!("{}:{}: link `{}`: {why}", rel(&md), link.line, link.dest));
            }
        }
    }
    assert!(checked >= 5, "found only {checked} links in README.md and docs/*.md: is the link parser broken?");
    assert!(problems.is_empty(), "{} broken link(s) in the docs:\n{}", problems.len(), problems.join("\n"));
}

/// The workflow files: what GitHub runs (`.github/workflows/`, not recursive: GitHub reads no
/// subfolders) and the examples meant to be copied there (`examples/github-actions/`).
fn is_workflow(path: &Path) -> bool {
    path.starts_with(root().join(".github/workflows")) || path.starts_with(root().join("examples/github-actions"))
}

/// Why `text` (the YAML file `path`) is not a valid workflow or example; `None` when it is.
fn yaml_problem(path: &Path, text: &str) -> Option<String> {
    let doc: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(d) => d,
        Err(e) => return Some(format!("does not parse as YAML: {e}")),
    };
    if !is_workflow(path) {
        return None;
    }
    let Some(map) = doc.as_mapping() else { return Some("a workflow must be a mapping at the top level".into()) };
    let mut missing: Vec<&str> = ["on", "jobs"].into_iter().filter(|k| !map.contains_key(*k)).collect();
    // A YAML 1.1 reader would take a bare `on` for `true`; GitHub (and this parser) take it
    // for the string. Say so rather than call it missing.
    if missing.contains(&"on") && map.contains_key(serde_yaml_ng::Value::Bool(true)) {
        return Some("the `on` key was read as the boolean true".into());
    }
    if !missing.is_empty() {
        missing.sort();
        return Some(format!(
            "a workflow needs the top-level key(s) {}",
            missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    match map.get("jobs").and_then(|j| j.as_mapping()) {
        Some(jobs) if !jobs.is_empty() => None,
        _ => Some("`jobs` must be a mapping with at least one job".into()),
    }
}

#[test]
fn every_workflow_and_example_yaml_parses() {
    let mut yaml = files(&root().join(".github/workflows"), &["yml", "yaml"], false);
    let examples = files(&root().join("examples"), &["yml", "yaml"], true);
    assert!(!yaml.is_empty(), "no YAML under .github/workflows/: is the path right?");
    assert!(!examples.is_empty(), "no YAML under examples/: the GitHub Actions deploy example is gone");
    yaml.extend(examples);
    let problems: Vec<String> = yaml.iter().filter_map(|p| yaml_problem(p, &read(p)).map(|why| format!("{}: {why}", rel(p)))).collect();
    assert!(problems.is_empty(), "{} YAML file(s) are not valid:\n{}", problems.len(), problems.join("\n"));
}

/// Every JSON file under `packaging/` parses, and the scoop manifest (README: Windows) names
/// the archive the release workflow publishes: `bst-v<version>-x86_64-pc-windows-msvc.zip`
/// with `bst.exe` in it, its hash read from `SHA256SUMS`. A renamed archive would otherwise
/// break `scoop install` and nothing here would notice.
#[test]
fn packaging_json_parses_and_the_scoop_manifest_names_the_release_zip() {
    let json = files(&root().join("packaging"), &["json"], true);
    assert!(!json.is_empty(), "no JSON under packaging/: the scoop manifest is gone");
    for p in &json {
        serde_json::from_str::<serde_json::Value>(&read(p)).unwrap_or_else(|e| panic!("{}: does not parse as JSON: {e}", rel(p)));
    }
    let path = root().join("packaging/scoop/bst.json");
    let m: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_else(|| panic!("{}: {v} is not a string", rel(&path))).to_string();
    let version = s(&m["version"]);
    let url = s(&m["architecture"]["64bit"]["url"]);
    let zip = format!("bst-v{version}-x86_64-pc-windows-msvc.zip");
    assert!(
        url.ends_with(&format!("/releases/download/v{version}/{zip}")),
        "{}: url {url} is not the v{version} release's {zip}",
        rel(&path)
    );
    assert_eq!(s(&m["autoupdate"]["architecture"]["64bit"]["url"]).replace("$version", &version), url, "{}: autoupdate url", rel(&path));
    assert!(url.starts_with(&format!("{}/", s(&m["homepage"]))), "{}: url {url} is not under homepage", rel(&path));
    let hash = s(&m["architecture"]["64bit"]["hash"]);
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{}: hash must be 64 hex digits (SHA-256)", rel(&path));
    assert_eq!(s(&m["autoupdate"]["hash"]["url"]), "$baseurl/SHA256SUMS", "{}: the hash comes from SHA256SUMS", rel(&path));
    assert_eq!(s(&m["bin"]), "bst.exe");
    let release = read(&root().join(".github/workflows/release.yml"));
    for part in [
        "target: x86_64-pc-windows-msvc",
        "$name = \"bst-$env:GITHUB_REF_NAME-${{ matrix.target }}\"",
        "release/bst.exe\", README.md -DestinationPath \"dist/$name.zip\"",
        "sha256sum bst-* > SHA256SUMS",
    ] {
        assert!(
            release.contains(part),
            "release.yml no longer has `{part}`: update packaging/scoop/bst.json and the README's Windows section with it"
        );
    }
}

/// The checks themselves, on small inputs: a check that passes because it reads nothing would
/// pass forever.
mod checks {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(slug("bst env set / bst env unset"), "bst-env-set--bst-env-unset");
        assert_eq!(slug(&heading_text("`bst env set` / `bst env unset`")), "bst-env-set--bst-env-unset");
        assert_eq!(
            slug(&heading_text("`bst <target> [<service>] status|start|stop|restart`")),
            "bst-target-service-statusstartstoprestart"
        );
        assert_eq!(slug("Release gates: common fields"), "release-gates-common-fields");
        assert_eq!(slug("Old commands → bst"), "old-commands--bst");
        assert_eq!(slug("Env dialects: who reads the file decides what it means"), "env-dialects-who-reads-the-file-decides-what-it-means");
        assert_eq!(slug("snake_case and kebab-case"), "snake_case-and-kebab-case");
        assert_eq!(slug(&heading_text("See [the guide](x.md) **now**")), "see-the-guide-now");
    }

    #[test]
    fn anchors_are_headings_outside_code_with_github_numbering() {
        let md = "# Top\n\n## Same\n\n```sh\n# not a heading\n```\n\n## Same\n\nSetext title\n------------\n\n### Closed ###\n\n<a id=\"here\"></a>\n";
        assert_eq!(anchors(md), ["top", "same", "same-1", "setext-title", "closed", "here"]);
        // A thematic break after a blank line is not a heading.
        assert_eq!(anchors("text\n\n---\n"), Vec::<String>::new());
    }

    #[test]
    fn links_outside_code_are_found_and_links_inside_it_are_not() {
        let md = "See [a](a.md) and [b](b.md#x \"title\").\n\n`[not](code.md)` and ``x `[no](c.md)` y``\n\n```md\n[fenced](f.md)\n```\n\n~~~\n[tilde](t.md)\n~~~\n\n![img](<p q.png>) [paren](w(1).md)\n\n[ref]: r.md\n";
        let got = links(md);
        let got: Vec<(usize, &str)> = got.iter().map(|l| (l.line, l.dest.as_str())).collect();
        assert_eq!(got, [(1, "a.md"), (1, "b.md#x"), (13, "p q.png"), (13, "w(1).md"), (15, "r.md")]);
    }

    #[test]
    fn a_broken_link_says_why() {
        let readme = root().join("README.md");
        assert_eq!(broken(&readme, "https://example.org/nowhere"), None);
        assert_eq!(broken(&readme, "mailto:x@example.org"), None);
        assert_eq!(broken(&readme, "docs/json.md#errors"), None);
        assert_eq!(broken(&readme, "docs/json.md"), None);
        assert_eq!(broken(&root().join("docs/json.md"), "#bst-env-set--bst-env-unset"), None);
        assert_eq!(broken(&readme, "examples/nope.yml").as_deref(), Some("examples/nope.yml does not exist"));
        let why = broken(&readme, "docs/json.md#no-such-heading").unwrap();
        assert!(why.contains("#no-such-heading matches no heading in docs/json.md"), "{why}");
        let why = broken(&root().join("docs/json.md"), "#bst-env-set-bst-env-unset").unwrap();
        assert!(why.contains("matches no heading in docs/json.md"), "{why}");
        assert!(broken(&readme, "../../etc/passwd").unwrap().contains("outside the repository"));
        assert_eq!(broken(&readme, "Cargo.toml#L1"), None);
        assert!(broken(&readme, "Cargo.toml#L999999").unwrap().contains("not a line anchor"));
    }

    #[test]
    fn a_workflow_without_jobs_or_with_bad_yaml_fails() {
        let wf = root().join(".github/workflows/x.yml");
        assert_eq!(yaml_problem(&wf, "on: push\njobs:\n  a:\n    runs-on: x\n    steps: []\n"), None);
        assert_eq!(yaml_problem(&wf, "on: push\n").as_deref(), Some("a workflow needs the top-level key(s) `jobs`"));
        assert_eq!(yaml_problem(&wf, "- a\n").as_deref(), Some("a workflow must be a mapping at the top level"));
        assert!(yaml_problem(&wf, "on: [push\njobs: {}\n").unwrap().starts_with("does not parse as YAML"));
        // Outside the workflow folders only parsing counts.
        assert_eq!(yaml_problem(&root().join("examples/other/x.yml"), "- a\n"), None);
    }
}
