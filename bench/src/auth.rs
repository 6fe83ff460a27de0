//! Signup and signin throughput (argon2 dominates), and the cost of one argon2 hash with the
//! parameters the auth service uses (argon2's defaults, as `auth/src/password.rs` does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, Params};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use crate::api::Api;
use crate::load::{Latencies, LatencySummary, run_all};
use crate::monitor::{Monitor, PhaseUsage};

pub const PASSWORD: &str = "flash-sale-1";

#[derive(Debug, Clone, Serialize, Default)]
pub struct Argon2Figures {
    pub algorithm: String,
    pub version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
    /// One hash at a time on one thread, in this process.
    pub single_hash_ms: f64,
    /// One hashing thread per CPU, in this process: the ceiling of signups per second here.
    pub parallel_hashes_per_second: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AuthRun {
    pub operation: String,
    pub users: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub throughput_per_second: f64,
    pub failures: usize,
    pub latency: LatencySummary,
    pub usage: PhaseUsage,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Auth {
    pub argon2: Argon2Figures,
    pub signup: AuthRun,
    pub signin: AuthRun,
}

/// What the auth phase hands to the flash sale: one session cookie per user.
pub struct SignedUp {
    pub cookies: Vec<String>,
}

pub async fn argon2_figures(hashes: usize) -> anyhow::Result<Argon2Figures> {
    let params = Params::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let single = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        hash_once()?;
        let started = Instant::now();
        for _ in 0..hashes {
            hash_once()?;
        }
        Ok(started.elapsed() / hashes.max(1) as u32)
    })
    .await??;
    let started = Instant::now();
    let per_thread = hashes.div_ceil(threads).max(1);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for _ in 0..per_thread {
                    hash_once()?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let parallel = (per_thread * threads) as f64 / started.elapsed().as_secs_f64();
    Ok(Argon2Figures {
        algorithm: "argon2id".to_owned(),
        version: 0x13,
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        lanes: params.p_cost(),
        single_hash_ms: single.as_secs_f64() * 1000.0,
        parallel_hashes_per_second: parallel,
        threads,
    })
}

fn hash_once() -> anyhow::Result<()> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(())
}

pub fn email(run: &str, user: usize) -> String {
    format!("buyer{user}-{run}@bench.test")
}

/// Signs up `users` users, `concurrency` at a time; every signup must succeed (the flash sale
/// needs them all).
pub async fn signup(
    api: &Api,
    monitor: &Monitor,
    run: &str,
    users: usize,
    concurrency: usize,
) -> anyhow::Result<(AuthRun, SignedUp)> {
    let (run_result, cookies) = authenticate(
        api,
        monitor,
        run,
        users,
        concurrency,
        "/api/users/signup",
        201,
    )
    .await?;
    let cookies: Vec<String> = cookies.into_iter().flatten().collect();
    if cookies.len() != users {
        bail!(
            "only {} of {users} signups succeeded; see .data/logs/auth.log",
            cookies.len()
        );
    }
    Ok((run_result, SignedUp { cookies }))
}

/// Signs in the first `users` users again.
pub async fn signin(
    api: &Api,
    monitor: &Monitor,
    run: &str,
    users: usize,
    concurrency: usize,
) -> anyhow::Result<AuthRun> {
    let (run_result, _) = authenticate(
        api,
        monitor,
        run,
        users,
        concurrency,
        "/api/users/signin",
        200,
    )
    .await?;
    Ok(run_result)
}

async fn authenticate(
    api: &Api,
    monitor: &Monitor,
    run: &str,
    users: usize,
    concurrency: usize,
    path: &'static str,
    expected: u16,
) -> anyhow::Result<(AuthRun, Vec<Option<String>>)> {
    let operation = path.trim_start_matches("/api/users/").to_owned();
    eprintln!("==> auth: {operation} of {users} users, {concurrency} at a time");
    let mark = monitor.begin(format!("auth {operation}")).await;
    let started = Instant::now();
    let api = Arc::new(api.clone());
    let outcomes = run_all((0..users).collect(), concurrency, {
        let run = run.to_owned();
        move |user: usize| {
            let (api, run) = (api.clone(), run.clone());
            async move {
                let body = json!({ "email": email(&run, user), "password": PASSWORD });
                let sent = Instant::now();
                let reply = api.send(Method::POST, path, None, Some(&body)).await;
                let elapsed = sent.elapsed();
                let cookie = match reply {
                    Ok(reply) if reply.status == expected => reply
                        .cookie
                        .ok_or_else(|| format!("{path}: no session cookie")),
                    Ok(reply) => Err(format!("{path}: {} {}", reply.status, reply.body)),
                    Err(err) => Err(format!("{path}: {err:#}")),
                };
                (elapsed, cookie)
            }
        }
    })
    .await
    .context("authenticating users")?;
    let seconds = started.elapsed().as_secs_f64();
    let usage = monitor.end(mark).await;
    let mut latencies = Latencies::new();
    for (elapsed, _) in &outcomes {
        latencies.record(*elapsed);
    }
    for failure in outcomes
        .iter()
        .filter_map(|(_, c)| c.as_ref().err())
        .take(5)
    {
        eprintln!("    failed: {failure}");
    }
    let cookies: Vec<Option<String>> = outcomes.into_iter().map(|(_, c)| c.ok()).collect();
    let failures = cookies.iter().filter(|c| c.is_none()).count();
    let result = AuthRun {
        operation,
        users,
        concurrency,
        seconds,
        throughput_per_second: (users - failures) as f64 / seconds,
        failures,
        latency: latencies.summary(),
        usage,
    };
    eprintln!(
        "    {:.1}/s, p50 {:.0} ms, p99 {:.0} ms, {} failures",
        result.throughput_per_second, result.latency.p50_ms, result.latency.p99_ms, failures
    );
    Ok((result, cookies))
}
