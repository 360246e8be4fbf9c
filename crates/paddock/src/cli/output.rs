//! Output helpers: writing to a stdout that may be closed (`ros ... | head`), tables and JSON.

use std::io::{self, Write};

/// True when the error chain bottoms out in EPIPE: the reader went away, which is not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout, returning EPIPE as an error instead of panicking like `println!`.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes a piece of container output where the user sees it: stdout (flushed, so `-f`
/// follows live) or stderr. The callback of the client's log and exec streams.
pub fn to_terminal(is_stderr: bool, data: &[u8]) -> io::Result<()> {
    if is_stderr {
        io::stderr().write_all(data)
    } else {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
}

/// The exit status of a command that went over several names.
pub fn exit_code(failed: bool) -> std::process::ExitCode {
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Runs `f` for each name, printing the name when it worked and `<label><name>: <error>`
/// when it did not (as docker's verbs over several containers do); fails if any failed.
pub fn for_each_name(
    names: &[String],
    label: &str,
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(()) => print(&format!("{n}\n"))?,
            Err(e) => {
                eprintln!("{label}{n}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(exit_code(failed))
}

/// Renders rows as left-aligned columns separated by three spaces, the way docker does.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.push('\n');
    };
    line(&mut s, header.to_vec());
    for row in rows {
        line(&mut s, row.iter().map(String::as_str).collect());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     LONGER\nxyz   1\n");
    }
}
