//! A WASI command for Skiff pods: greets, shows its environment and a mounted file, and
//! can misbehave on request, to show how a node treats guests.
//!
//! Usage: `wasi-hello [COMMAND]...`, the commands run in order:
//! - `hello` (the default): prints a greeting from `$GREETING` (or `/config/greeting`)
//!   and `$NAME`, and the value of every variable listed in `$SHOW`
//! - `cat PATH`: prints a file, or why it cannot be read
//! - `stdin`: copies standard input to standard output (for `kubectl exec -i`)
//! - `ls PATH`: lists a directory
//! - `write PATH TEXT`: writes a file
//! - `sleep SECONDS`: sleeps
//! - `spin SECONDS`: burns CPU for that long (wall clock)
//! - `hog MIB`: allocates and touches that much memory, 1 MiB at a time
//! - `panic`: panics
//! - `exit CODE`: exits with that code

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut words = args.iter().map(String::as_str);
    let mut ran = false;
    while let Some(word) = words.next() {
        ran = true;
        match word {
            "hello" => hello(),
            "cat" => cat(words.next().unwrap_or("/")),
            "stdin" => {
                if let Err(e) = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::stdout().lock()) {
                    eprintln!("cannot copy stdin: {e}");
                }
            }
            "ls" => ls(words.next().unwrap_or("/")),
            "write" => {
                let (path, text) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                match std::fs::write(path, text) {
                    Ok(()) => println!("wrote {path}"),
                    Err(e) => println!("cannot write {path}: {e}"),
                }
            }
            "sleep" => std::thread::sleep(Duration::from_secs_f64(number(words.next()))),
            "spin" => spin(number(words.next())),
            "hog" => hog(number(words.next()) as usize),
            "panic" => panic!("asked to panic"),
            "exit" => std::process::exit(number(words.next()) as i32),
            other => {
                eprintln!("unknown command {other:?}");
                std::process::exit(2);
            }
        }
    }
    if !ran {
        hello();
    }
}

fn number(word: Option<&str>) -> f64 {
    word.and_then(|w| w.parse().ok()).unwrap_or(0.0)
}

fn hello() {
    let greeting = std::env::var("GREETING")
        .ok()
        .or_else(|| std::fs::read_to_string("/config/greeting").ok())
        .unwrap_or_else(|| "Hello".into());
    let name = std::env::var("NAME").unwrap_or_else(|_| "world".into());
    println!("{}, {name}!", greeting.trim());
    for var in std::env::var("SHOW").unwrap_or_default().split(',').filter(|v| !v.is_empty()) {
        println!("{var}={}", std::env::var(var).unwrap_or_default());
    }
}

fn cat(path: &str) {
    match std::fs::read_to_string(path) {
        Ok(text) => println!("{path}: {}", text.trim_end()),
        Err(e) => println!("cannot read {path}: {e}"),
    }
}

fn ls(path: &str) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            println!("{path}: {}", names.join(" "));
        }
        Err(e) => println!("cannot list {path}: {e}"),
    }
}

fn spin(seconds: f64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut x: u64 = 1;
    let mut rounds: u64 = 0;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        rounds += 1;
    }
    println!("spun {rounds} rounds ({x})");
}

fn hog(mib: usize) {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(vec![i as u8; 1 << 20]);
        if (i + 1) % 16 == 0 {
            println!("holding {} MiB", i + 1);
        }
    }
    println!("held {mib} MiB");
}
