//! The README's command table, `--help` and the generated man pages
//! describe the same commands and options.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    fn out(args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_iscsimple"))
            .args(args)
            .output()
            .expect("run iscsimple");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8")
    }

    /// `(command, options)` of each README command table row.
    fn readme_rows() -> Vec<(String, BTreeSet<String>)> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Commands and exit codes")
            .nth(1)
            .expect("the commands section");
        table
            .lines()
            .skip_while(|l| !l.starts_with("| command"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cell = l.split('`').nth(1).expect("a `iscsimple ...` cell");
                let mut words = cell.split_whitespace();
                assert_eq!(words.next(), Some("iscsimple"), "{l}");
                let cmd = words.next().expect("a command").to_string();
                let opts = cell
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .filter(|w| w.starts_with("--"))
                    .map(str::to_string)
                    .collect();
                (cmd, opts)
            })
            .collect()
    }

    /// Subcommands listed by `iscsimple --help`.
    fn help_commands() -> BTreeSet<String> {
        out(&["--help"])
            .split("Commands:")
            .nth(1)
            .expect("a Commands section")
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    }

    #[test]
    fn readme_table_matches_help() {
        let rows = readme_rows();
        let readme: BTreeSet<String> = rows.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(readme, help_commands(), "README command table vs --help");
        for (cmd, opts) in rows {
            let help = out(&[&cmd, "--help"]);
            for o in opts {
                assert!(
                    help.contains(&o),
                    "README gives {cmd} {o}, --help does not:\n{help}"
                );
            }
            // and every option --help shows is in the README row or global
            for o in help
                .split_whitespace()
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(|w| w.trim_end_matches([',', '.', ')']))
            {
                let global = ["--config", "--verbose", "--quiet", "--help", "--version"];
                let row = rows_for(&cmd);
                assert!(
                    global.contains(&o) || row.contains(o),
                    "{cmd} --help has {o}, the README row does not"
                );
            }
        }
    }

    fn rows_for(cmd: &str) -> String {
        let readme = include_str!("../README.md");
        readme
            .lines()
            .find(|l| l.starts_with(&format!("| `iscsimple {cmd}")))
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn man_pages_match_help() {
        let dir = tempfile::tempdir().expect("tempdir");
        out(&["generate-assets", dir.path().to_str().expect("utf8")]);
        let man = std::fs::read_to_string(dir.path().join("man/iscsimple.8")).expect("iscsimple.8");
        for c in help_commands() {
            assert!(
                man.contains(&format!("iscsimple\\-{}(8)", c.replace('-', "\\-"))),
                "iscsimple.8 lists {c}"
            );
            let page = std::fs::read_to_string(dir.path().join(format!("man/iscsimple-{c}.8")))
                .unwrap_or_else(|e| panic!("iscsimple-{c}.8: {e}"));
            for o in out(&[&c, "--help"])
                .split_whitespace()
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(|w| w.trim_end_matches([',', '.', ')']))
            {
                // roff escapes '-' as '\-'
                assert!(
                    page.contains(&o.replace('-', "\\-")),
                    "iscsimple-{c}.8 documents {o}"
                );
            }
        }
        assert!(
            !man.contains("generate"),
            "the hidden subcommand stays out of the man page"
        );
        for shell in ["iscsimple.bash", "_iscsimple", "iscsimple.fish"] {
            let c =
                std::fs::read_to_string(dir.path().join("completions").join(shell)).expect(shell);
            assert!(c.contains("doctor") && c.contains("--watch"), "{shell}");
        }
    }
}
