//! Shell completions and man pages, generated from the clap definitions.

use std::path::Path;

use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs, ManArgs};
use crate::error::{CliResult, io};

/// `hardkey completions SHELL`.
pub(crate) fn completions(a: &CompletionsArgs) -> CliResult {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "hardkey", &mut out);
    super::write_output(Path::new("-"), &out, "the completion script", &[])
}

/// `hardkey man --out-dir DIR`: `hardkey.1` and `hardkey-COMMAND[-SUB].1`.
pub(crate) fn man(a: &ManArgs) -> CliResult {
    std::fs::create_dir_all(&a.out_dir).map_err(|e| io("create", &a.out_dir, e))?;
    let mut written = Vec::new();
    write_pages(Cli::command(), "hardkey", &a.out_dir, &mut written)?;
    crate::output::note(&format!(
        "wrote {} man pages to {}",
        written.len(),
        a.out_dir.display()
    ));
    Ok(())
}

fn write_pages(
    command: clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> CliResult {
    let command = command.name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(|e| io("render the man page of", Path::new(name), e))?;
    let path = dir.join(format!("{name}.1"));
    super::write_output(&path, &page, "a man page", &[])?;
    written.push(name.to_owned());
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(sub.clone(), &sub_name, dir, written)?;
    }
    Ok(())
}
