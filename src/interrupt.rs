//! Ctrl-C handling, and SIGTERM and SIGHUP handled the same way (a cancelled CI job, a closed
//! terminal). The first signal sets a flag that long loops turn into
//! [`Error::Interrupted`], so cleanup (partial release removed, lock released) still runs;
//! a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{code, Error};

static PENDING: AtomicBool = AtomicBool::new(false);
static SEEN: AtomicBool = AtomicBool::new(false);
static CRITICAL: AtomicBool = AtomicBool::new(false);

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if SEEN.swap(true, Ordering::SeqCst) {
            // The signal thread, below the printer (which asks this module whether a signal
            // came): a second Ctrl-C exits at once and says so.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("bst: interrupted again, exiting without cleanup");
            }
            std::process::exit(code::INTERRUPTED);
        }
        PENDING.store(true, Ordering::SeqCst);
    });
}

/// Consumes a pending interrupt: the first caller gets the error, cleanup code after it runs
/// undisturbed.
pub fn check() -> Result<(), Error> {
    if CRITICAL.load(Ordering::SeqCst) {
        return Ok(());
    }
    if PENDING.swap(false, Ordering::SeqCst) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Whether Ctrl-C was pressed at all during this run.
pub fn seen() -> bool {
    SEEN.load(Ordering::SeqCst)
}

/// While alive, Ctrl-C is held back: the switch must complete once it has started, or
/// bst could report a failure for a deploy that in fact went live.
pub struct Critical;

impl Critical {
    pub fn enter() -> Critical {
        CRITICAL.store(true, Ordering::SeqCst);
        Critical
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        CRITICAL.store(false, Ordering::SeqCst);
    }
}
