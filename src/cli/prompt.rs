//! Secrets typed at a terminal: passphrases and unlock keys.

/// Reads one line of standard input. At a terminal it shows `prompt` and does not echo what
/// is typed; echo goes off before the prompt is shown (as sudo does), so nothing typed after
/// the prompt appears, however fast it comes. From a pipe or file it reads without a prompt.
pub fn read_hidden_line(prompt: &str) -> std::io::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let mut line = String::new();
    if !stdin.is_terminal() {
        stdin.read_line(&mut line)?;
        return Ok(line);
    }
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    eprint!("{prompt}");
    let read = stdin.read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &saved)?;
    eprintln!();
    read.map(|_| line)
}
