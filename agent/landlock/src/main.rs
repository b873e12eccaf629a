//! shoal-landlock: the entry point of every task on a node whose kernel has Landlock. Confines
//! itself with Shoal's ruleset (see the library), then execs the task's command in its place:
//! same pid, environment, working directory and user.
//!
//! Usage: `shoal-landlock [--scopes=signal,abstract-unix-socket|none] -- PROGRAM [ARG...]`;
//! without `--scopes` every scope applies (a task's entry point); PROGRAM without a `/` is
//! looked up in `PATH`.
//! Exit status 125: the task could not be confined and its command did not run; 126: the
//! command cannot be executed; 127: it was not found. The reason goes to stderr, the task's log.

use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use shoal_landlock::{EXIT_CANNOT_RUN, EXIT_NOT_CONFINED, EXIT_NOT_FOUND};

fn main() -> ExitCode {
    let invocation = match shoal_landlock::parse_args(std::env::args_os().skip(1)) {
        Ok(i) => i,
        Err(usage) => return fail(EXIT_NOT_CONFINED, &usage.to_string()),
    };
    if let Err(e) = shoal_landlock::confine(invocation.scopes) {
        let why = format!("cannot confine the task with Landlock, so it did not run: {e}");
        return fail(EXIT_NOT_CONFINED, &why);
    }
    let (program, args) = invocation.command.split_first().expect("parse_args returns a program");
    let err = Command::new(program).args(args).exec();
    let code = if err.kind() == ErrorKind::NotFound { EXIT_NOT_FOUND } else { EXIT_CANNOT_RUN };
    fail(code, &format!("cannot run {program:?}: {err}"))
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("shoal-landlock: {message}");
    ExitCode::from(code)
}
