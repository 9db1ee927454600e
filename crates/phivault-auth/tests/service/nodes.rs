//! Login limits shared by every node on one database: failures through one node count on
//! the other, parallel guesses across nodes cannot all pass, and the rows keep no address or
//! username and expire.

use super::*;

/// Two servers on one database: two stores opened on the same SQLite file (or the same
/// PostgreSQL schema) under one master key, each with its own accounts service, on one clock.
struct TwoNodes {
    a: Accounts,
    b: Accounts,
    clock: Arc<FixedClock>,
    /// The SQLite directory (empty for PostgreSQL).
    dir: tempfile::TempDir,
    /// PostgreSQL: the server URL and the schema.
    pg: Option<(String, String)>,
    label: &'static str,
}

impl TwoNodes {
    async fn open(
        url: &str,
        dir: tempfile::TempDir,
        pg: Option<(String, String)>,
        label: &'static str,
    ) -> TwoNodes {
        let key = format!("{}{}", random_hex(), random_hex());
        let clock = Arc::new(FixedClock::new(T0));
        // One after the other, as nodes start: the second finds the schema and the keys the
        // first made.
        let a = service(open_with_key(url, &key).await, &clock);
        let b = service(open_with_key(url, &key).await, &clock);
        TwoNodes {
            a,
            b,
            clock,
            dir,
            pg,
            label,
        }
    }

    /// Rows of `table` whose token is `token`.
    async fn rows(&self, table: &str, token: Vec<u8>) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE token = $1"))
            .bind(token)
            .fetch_one(self.a.store().pool())
            .await
            .unwrap()
    }
}

/// Two nodes on each backend under test.
async fn two_nodes() -> Vec<TwoNodes> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/phivault.db", dir.path().display());
    out.push(TwoNodes::open(&url, dir, None, "sqlite").await);
    if let Some((base, schema, url)) = pg_schema().await {
        let dir = tempfile::tempdir().unwrap();
        out.push(TwoNodes::open(&url, dir, Some((base, schema)), "postgres").await);
    }
    out
}

async fn attempt(
    accounts: &Accounts,
    username: &str,
    password: &str,
    address: IpAddr,
) -> Result<LoginOutcome, ServiceError> {
    accounts
        .login(LoginRequest {
            username: username.to_owned(),
            password: Password::new(password),
            totp: None,
            recovery_code: None,
            address,
        })
        .await
}

fn is_throttled(r: &Result<LoginOutcome, ServiceError>, secs: i64) -> bool {
    matches!(r, Err(ServiceError::Throttled { retry_after }) if *retry_after == secs)
}

/// A guess on one node counts on the other: the per-address limit, the lockout of a name
/// without an account and the lockout of an account, each used up by failures split between
/// two servers on one database.
#[tokio::test]
async fn failures_on_one_node_count_on_the_other() {
    for n in two_nodes().await {
        let l = n.label;
        n.a.create_user("olivia", Password::new(PASSWORD), Role::Patient, &NoAudit)
            .await
            .unwrap();

        // The per-address limit (3 here). Successes through either node are not counted;
        // two failures through A and one through B use it up on both.
        let limit = AddressLimiter::new(3, 300);
        let a = n.a.clone().with_address_limiter(limit);
        let b = n.b.clone().with_address_limiter(limit);
        for node in [&a, &b, &a, &b] {
            attempt(node, "olivia", PASSWORD, ip(1)).await.unwrap();
        }
        for node in [&a, &a, &b] {
            let r = attempt(node, "olivia", "wrong password here", ip(1)).await;
            assert!(is_credential_failure(&r), "{l}: {r:?}");
        }
        for node in [&a, &b] {
            let r = attempt(node, "olivia", PASSWORD, ip(1)).await;
            assert!(is_throttled(&r, 300), "{l}: {r:?}");
        }
        attempt(&b, "olivia", PASSWORD, ip(2)).await.unwrap();
        // An IPv6 /64 is one address on both nodes.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for (node, addr) in [
            (&a, "2001:db8:5:6::1"),
            (&b, "2001:db8:5:6::2"),
            (&a, "2001:db8:5:6:ffff::3"),
        ] {
            let r = attempt(node, "nobody.here", PASSWORD, v6(addr)).await;
            assert!(is_credential_failure(&r), "{l}: {r:?}");
        }
        let r = attempt(&b, "olivia", PASSWORD, v6("2001:db8:5:6::4")).await;
        assert!(is_throttled(&r, 300), "{l}: {r:?}");
        attempt(&b, "olivia", PASSWORD, v6("2001:db8:5:7::1"))
            .await
            .unwrap();
        // The window slides past the failures on both nodes.
        n.clock.advance(300);
        attempt(&a, "olivia", PASSWORD, ip(1)).await.unwrap();

        // A name without an account: five failures through both nodes lock it on both, for
        // the name as an account's is compared (trimmed, lower-cased).
        for (i, node) in [&n.a, &n.b, &n.a, &n.b, &n.b].into_iter().enumerate() {
            let r = attempt(node, "ghost.of.nobody", "wrong password here", ip(10)).await;
            assert!(is_credential_failure(&r), "{l} #{i}: {r:?}");
        }
        for (node, name) in [
            (&n.a, "ghost.of.nobody"),
            (&n.b, "ghost.of.nobody"),
            (&n.b, "  Ghost.Of.Nobody "),
        ] {
            let r = attempt(node, name, PASSWORD, ip(11)).await;
            assert!(is_throttled(&r, 60), "{l}: {r:?}");
        }
        // After the lock one more failure (through B) locks it twice as long (seen on A).
        n.clock.advance(60);
        let r = attempt(&n.b, "ghost.of.nobody", "wrong password here", ip(11)).await;
        assert!(is_credential_failure(&r), "{l}: {r:?}");
        let r = attempt(&n.a, "ghost.of.nobody", PASSWORD, ip(11)).await;
        assert!(is_throttled(&r, 120), "{l}: {r:?}");

        // An account (its count was always in the users table): the same.
        n.b.create_user(
            "peter.known",
            Password::new(PASSWORD),
            Role::Patient,
            &NoAudit,
        )
        .await
        .unwrap();
        for (i, node) in [&n.b, &n.a, &n.b, &n.a, &n.a].into_iter().enumerate() {
            let r = attempt(node, "peter.known", "wrong password here", ip(12)).await;
            assert!(is_credential_failure(&r), "{l} #{i}: {r:?}");
        }
        for node in [&n.a, &n.b] {
            let r = attempt(node, "peter.known", PASSWORD, ip(12)).await;
            assert!(is_throttled(&r, 60), "{l}: {r:?}");
        }
        n.clock.advance(60);
        attempt(&n.b, "peter.known", PASSWORD, ip(12))
            .await
            .unwrap();
        // The success through B reset the count for A too: four failures do not lock.
        for node in [&n.a, &n.b, &n.a, &n.b] {
            let r = attempt(node, "peter.known", "wrong password here", ip(12)).await;
            assert!(is_credential_failure(&r), "{l}: {r:?}");
        }
        attempt(&n.a, "peter.known", PASSWORD, ip(12))
            .await
            .unwrap();
    }
}

/// Parallel guesses through two nodes at once cannot all pass: 50 wrong passwords on an
/// account and on a name without one give exactly five password checks each, and 40 attempts
/// from one address against a limit of 10 give exactly ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_across_nodes_cannot_all_pass() {
    for n in two_nodes().await {
        let l = n.label;
        n.a.create_user(
            "quentin.target",
            Password::new(PASSWORD),
            Role::Patient,
            &NoAudit,
        )
        .await
        .unwrap();
        let tally = |results: Vec<Result<LoginOutcome, ServiceError>>| {
            let mut failures = 0;
            let mut throttled = 0;
            for r in results {
                match r {
                    Err(ServiceError::CredentialFailure) => failures += 1,
                    Err(ServiceError::Throttled { .. }) => throttled += 1,
                    other => panic!("{l}: {other:?}"),
                }
            }
            (failures, throttled)
        };
        for name in ["quentin.target", "no.such.person"] {
            let tasks: Vec<_> = (0..50u8)
                .map(|i| {
                    let node = if i % 2 == 0 { n.a.clone() } else { n.b.clone() };
                    tokio::spawn(async move {
                        attempt(&node, name, &format!("wrong guess number {i}"), ip(i)).await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            assert_eq!(tally(results), (5, 45), "{l} {name}");
            for node in [&n.a, &n.b] {
                let r = attempt(node, name, PASSWORD, ip(99)).await;
                assert!(is_throttled(&r, 60), "{l} {name}: {r:?}");
            }
        }

        let limit = AddressLimiter::new(10, 300);
        let a = n.a.clone().with_address_limiter(limit);
        let b = n.b.clone().with_address_limiter(limit);
        let tasks: Vec<_> = (0..40u8)
            .map(|i| {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    attempt(&node, &format!("someone.{i}"), "a guess or other", ip(200)).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(tally(results), (10, 30), "{l}: per address");
    }
}

/// The login-limit rows hold blind tokens only, never the client address or the username that
/// was tried (scanned in the database files, or a dump of the PostgreSQL schema, as text,
/// UTF-16 and hex), and they are deleted once they expire: an address's after its window, a
/// name's a day after its last attempt.
#[tokio::test]
async fn login_limits_keep_no_address_or_username_and_expire() {
    use phivault_store::login_limits::{ADDRESS_KIND, UNKNOWN_NAME_KIND};

    for n in two_nodes().await {
        let l = n.label;
        let tag = random_hex();
        let username = format!("Ghost.Marker{}", &tag[..12]);
        let last = u8::from_str_radix(&tag[12..14], 16).unwrap();
        let v4 = IpAddr::from([203, 0, 113, last.max(100)]);
        let v6: IpAddr = format!("2001:db8:f{}:f{}::9", &tag[14..17], &tag[17..20])
            .parse()
            .unwrap();
        let v6_key = AddressLimiter::key(v6);
        let v6_prefix = v6_key.trim_end_matches("::/64").to_owned();
        for node in [&n.a, &n.b, &n.a] {
            for address in [v4, v6] {
                let r = attempt(node, &username, PASSWORD, address).await;
                assert!(r.is_err(), "{l}: {r:?}");
            }
        }
        // The rows the scan must not see through.
        let store = n.a.store();
        let v4_token = store.directory_token(ADDRESS_KIND, &AddressLimiter::key(v4));
        let v6_token = store.directory_token(ADDRESS_KIND, &v6_key);
        let name_token = store.directory_token(UNKNOWN_NAME_KIND, &username.to_lowercase());
        assert_eq!(
            n.rows("login_address_limits", v4_token.clone()).await,
            1,
            "{l}"
        );
        assert_eq!(
            n.rows("login_address_limits", v6_token.clone()).await,
            1,
            "{l}"
        );
        assert_eq!(
            n.rows("login_unknown_names", name_token.clone()).await,
            1,
            "{l}"
        );

        let secrets = [
            username.clone(),
            username.to_lowercase(),
            v4.to_string(),
            v6.to_string(),
            v6_key.clone(),
            v6_prefix,
        ];
        assert!(secrets.iter().all(|s| s.len() >= 11), "{secrets:?}");
        let scan = |what: &str, bytes: &[u8], hex_too: bool| {
            assert_absent(bytes, &secrets, &format!("{l} {what}"), hex_too);
        };
        if let Some((base, schema)) = &n.pg {
            let dump = pg_data_dump(base, schema);
            assert!(String::from_utf8_lossy(&dump).contains("login_unknown_names"));
            scan("pg_dump", &dump, true);
        } else {
            scan("open", &database_bytes(n.dir.path()), false);
        }

        // Past the window the addresses' rows go at the next prune (any attempt, on either
        // node, at most once a minute per node); the name's stays for a day.
        n.clock.advance(301);
        let _ = attempt(&n.b, "someone.else", PASSWORD, ip(77)).await;
        assert_eq!(n.rows("login_address_limits", v4_token).await, 0, "{l}");
        assert_eq!(n.rows("login_address_limits", v6_token).await, 0, "{l}");
        assert_eq!(
            n.rows("login_unknown_names", name_token.clone()).await,
            1,
            "{l}"
        );
        n.clock.advance(86_400);
        let _ = attempt(&n.a, "someone.else", PASSWORD, ip(77)).await;
        assert_eq!(n.rows("login_unknown_names", name_token).await, 0, "{l}");

        if n.pg.is_none() {
            n.a.store().close().await;
            n.b.store().close().await;
            scan("closed", &database_bytes(n.dir.path()), false);
        }
    }
}
