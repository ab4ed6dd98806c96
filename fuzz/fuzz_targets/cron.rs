//! CronJob schedules: parsing answers a schedule or an error, and a schedule that parses
//! finds its next time (or none) without panicking or looping for ever.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_core::cron::Schedule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(schedule) = Schedule::parse(text) {
        let now: jiff::Zoned = "2026-02-28T23:59:30+00:00[UTC]".parse().expect("a fixed time");
        let _ = schedule.next_after(&now);
    }
});
