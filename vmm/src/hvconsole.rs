//! The hypervisor console's key handling: bytes typed on the hypervisor's
//! own UART either go to the VM that has the input focus (its UART's
//! receive side) or, after the prefix Ctrl-A, are commands:
//!
//! | keys | action |
//! |---|---|
//! | Ctrl-A `n` | focus the next VM (wraps) |
//! | Ctrl-A `0`-`9` | focus VM 0-9 (as `l` numbers them) |
//! | Ctrl-A `l` | list the VMs: number, name, state, vCPUs, exits |
//! | Ctrl-A `s` | exit statistics of the focused VM |
//! | Ctrl-A `x` | stop the focused VM |
//! | Ctrl-A `h` or `?` | this help |
//! | Ctrl-A Ctrl-A | a literal Ctrl-A to the focused VM |
//!
//! Any other key after the prefix is dropped (and the help shown), so a
//! typo never reaches a guest as a control character. QEMU's own Ctrl-A
//! prefix is active only with `-serial mon:stdio` / `-nographic`; there,
//! type Ctrl-A twice for one of ours.

/// The prefix key (Ctrl-A).
pub const PREFIX: u8 = 0x01;

/// What one key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet (the prefix was typed).
    None,
    /// This byte goes to the focused VM's console input.
    Input(u8),
    /// The focus moved to VM `n` (announce it).
    Focus(usize),
    List,
    Stats,
    Stop,
    Help,
}

/// The prefix state and the input focus.
#[derive(Clone, Debug, Default)]
pub struct HvConsole {
    prefix: bool,
    focus: usize,
}

impl HvConsole {
    pub fn new() -> HvConsole {
        HvConsole::default()
    }

    /// The VM that receives input (an index into the VM list).
    pub fn focus(&self) -> usize {
        self.focus
    }

    /// One key typed while `vms` VMs exist.
    pub fn key(&mut self, b: u8, vms: usize) -> Action {
        if !core::mem::take(&mut self.prefix) {
            if b == PREFIX {
                self.prefix = true;
                return Action::None;
            }
            return Action::Input(b);
        }
        match b {
            PREFIX => Action::Input(PREFIX),
            b'n' if vms > 0 => {
                self.focus = (self.focus + 1) % vms;
                Action::Focus(self.focus)
            }
            b'0'..=b'9' if usize::from(b - b'0') < vms => {
                self.focus = usize::from(b - b'0');
                Action::Focus(self.focus)
            }
            b'l' => Action::List,
            b's' => Action::Stats,
            b'x' => Action::Stop,
            _ => Action::Help,
        }
    }

    /// The help text, one line per entry.
    pub fn help() -> &'static [&'static str] {
        &[
            "hypervisor console: Ctrl-A then",
            "  n      focus the next VM",
            "  0-9    focus VM 0-9",
            "  l      list the VMs",
            "  s      exit statistics of the focused VM",
            "  x      stop the focused VM",
            "  h ?    this help",
            "  Ctrl-A a Ctrl-A to the focused VM",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_to_the_focused_vm_unless_prefixed() {
        let mut c = HvConsole::new();
        assert_eq!(c.key(b'a', 3), Action::Input(b'a'));
        assert_eq!(c.key(b'\r', 3), Action::Input(b'\r'));
        assert_eq!(c.key(PREFIX, 3), Action::None);
        assert_eq!(c.key(PREFIX, 3), Action::Input(PREFIX));
        assert_eq!(
            c.key(b'a', 3),
            Action::Input(b'a'),
            "the prefix is one key only"
        );
    }

    #[test]
    fn focus_moves_and_wraps() {
        let mut c = HvConsole::new();
        let cmd = |c: &mut HvConsole, k: u8, vms| {
            assert_eq!(c.key(PREFIX, vms), Action::None);
            c.key(k, vms)
        };
        assert_eq!(cmd(&mut c, b'n', 3), Action::Focus(1));
        assert_eq!(cmd(&mut c, b'n', 3), Action::Focus(2));
        assert_eq!(cmd(&mut c, b'n', 3), Action::Focus(0));
        assert_eq!(cmd(&mut c, b'2', 3), Action::Focus(2));
        assert_eq!(c.focus(), 2);
        // A VM number that does not exist: help, focus kept.
        assert_eq!(cmd(&mut c, b'7', 3), Action::Help);
        assert_eq!(c.focus(), 2);
        // No VMs: nothing to focus.
        assert_eq!(cmd(&mut c, b'n', 0), Action::Help);
    }

    #[test]
    fn commands_and_unknown_keys() {
        let mut c = HvConsole::new();
        for (k, a) in [
            (b'l', Action::List),
            (b's', Action::Stats),
            (b'x', Action::Stop),
            (b'h', Action::Help),
            (b'?', Action::Help),
            (0x1b, Action::Help),
            (0xff, Action::Help),
        ] {
            assert_eq!(c.key(PREFIX, 2), Action::None);
            assert_eq!(c.key(k, 2), a, "{k:#x}");
        }
        assert!(HvConsole::help().len() > 5);
    }
}
