//! Ctrl-C handling. The first SIGINT sets a flag that long loops turn into
//! [`Error::Interrupted`], so cleanup (partial release removed, lock released) still runs;
//! a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{code, Error};

static PENDING: AtomicBool = AtomicBool::new(false);
static SEEN: AtomicBool = AtomicBool::new(false);

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if SEEN.swap(true, Ordering::SeqCst) {
            eprintln!("bst: interrupted again, exiting without cleanup");
            std::process::exit(code::INTERRUPTED);
        }
        PENDING.store(true, Ordering::SeqCst);
    });
}

/// Consumes a pending interrupt: the first caller gets the error, cleanup code after it runs
/// undisturbed.
pub fn check() -> Result<(), Error> {
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
