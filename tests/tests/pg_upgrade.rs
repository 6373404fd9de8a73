//! The upgrade path, on whichever PostgreSQL the harness runs (`make test/pg PG=NN`).
//!
//! Every released version's install script is kept as a fixture,
//! `pg-ext/sql/released/txevents--<version>.sql`, made at the release's commit by
//! `scripts/released-sql.sh <git rev>`. For each fixture the test installs that file
//! next to the current extension, runs `CREATE EXTENSION txevents VERSION '<version>'`
//! with events, a consumer group and a claim in flight, then
//! `ALTER EXTENSION txevents UPDATE` through the `txevents--<old>--<new>.sql` scripts
//! of `pg-ext/sql/`, and checks that the claim can be acked, that the group keeps
//! delivering and that emit notifies. The same procedure also runs from the current
//! version (UPDATE is then a no-op), so it stays working while there is no release.
//! A plain check makes sure the scripts and fixtures form a chain from every released
//! version to the current one.

mod pg_common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cachetx_tests::pg;
use pg_common::{ack, count, drain_group, emit, ids_of, poll, polled_ids, Listener, QUIET};

/// The version `cargo pgrx install` installs (the workspace version, as txevents').
const CURRENT: &str = env!("CARGO_PKG_VERSION");

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pg-ext/sql")
}

/// `txevents--<middle>.sql` file names in `dir`: middle -> path.
fn scripts(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("read_dir entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(middle) = name
            .strip_prefix("txevents--")
            .and_then(|n| n.strip_suffix(".sql"))
        {
            out.insert(middle.to_owned(), path.clone());
        }
    }
    out
}

/// Released versions with a fixture (install script), oldest name first.
fn released() -> BTreeMap<String, PathBuf> {
    scripts(&sql_dir().join("released"))
}

/// Upgrade scripts: old version -> new version.
fn upgrades() -> BTreeMap<String, String> {
    scripts(&sql_dir())
        .into_iter()
        .map(|(middle, path)| {
            let (old, new) = middle
                .split_once("--")
                .unwrap_or_else(|| panic!("{}: not txevents--<old>--<new>.sql", path.display()));
            let text = fs::read_to_string(&path).expect("read upgrade script");
            assert!(
                text.starts_with("\\echo Use \"ALTER EXTENSION txevents UPDATE\""),
                "{}: must start with the \\echo ... \\quit header (pg-ext/sql/README.md)",
                path.display()
            );
            (old.to_owned(), new.to_owned())
        })
        .collect()
}

#[test]
fn every_upgrade_script_starts_at_a_released_version_and_the_chain_reaches_the_current_one() {
    let released = released();
    let upgrades = upgrades();
    assert!(
        !released.contains_key(CURRENT),
        "pg-ext/sql/released/txevents--{CURRENT}.sql: the current version is not released yet"
    );
    for old in upgrades.keys() {
        assert!(
            released.contains_key(old),
            "pg-ext/sql/txevents--{old}--*.sql has no fixture of {old} to test it from: \
             run scripts/released-sql.sh <the {old} release's commit>"
        );
    }
    for version in released.keys() {
        let mut at = version.clone();
        let mut steps = 0;
        while at != CURRENT {
            at = upgrades.get(&at).cloned().unwrap_or_else(|| {
                panic!("no upgrade script from {at} (on the way from {version} to {CURRENT})")
            });
            steps += 1;
            assert!(steps <= upgrades.len(), "upgrade scripts loop at {at}");
        }
    }
}

/// The server's extension directory (`pg_config --sharedir` of the server under test).
fn extension_dir() -> PathBuf {
    let pg_config = pg().bindir().join("pg_config");
    let out = Command::new(&pg_config)
        .arg("--sharedir")
        .output()
        .unwrap_or_else(|e| panic!("run {} --sharedir: {e}", pg_config.display()));
    assert!(
        out.status.success(),
        "{} --sharedir failed",
        pg_config.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension")
}

/// Installs a released version's script next to the current extension (a packaged
/// older release would have left it there too).
fn install_fixture(version: &str, fixture: &Path) {
    let target = extension_dir().join(format!("txevents--{version}.sql"));
    let text = fs::read(fixture).expect("read fixture");
    if fs::read(&target).ok().as_deref() != Some(&text[..]) {
        fs::write(&target, &text).unwrap_or_else(|e| {
            panic!(
                "install {} as {}: {e} (run the tests as root, as CI does)",
                fixture.display(),
                target.display()
            )
        });
    }
}

/// CREATE EXTENSION at `from`, work in flight, UPDATE, delivery continues.
fn update_keeps_delivering(from: &str) {
    let db = pg().create_db_without_extension(&format!("pg_upgrade::from_{from}"));
    let mut c = db.connect();
    c.batch_execute(&format!("CREATE EXTENSION txevents VERSION '{from}'"))
        .unwrap_or_else(|e| panic!("CREATE EXTENSION txevents VERSION '{from}': {e:?}"));
    c.batch_execute("SELECT txevents.create_consumer('g')")
        .expect("create_consumer");
    let before: Vec<i64> = (0..3).map(|_| emit(&mut c, "order.created")).collect();
    // One event claimed by a worker and not yet acked across the update.
    let claimed = polled_ids(&poll(&mut c, "g", 1, "5 min"));
    assert_eq!(claimed, before[..1]);

    c.batch_execute("ALTER EXTENSION txevents UPDATE")
        .unwrap_or_else(|e| panic!("ALTER EXTENSION txevents UPDATE from {from}: {e:?}"));
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'txevents'",
            &[],
        )
        .expect("extversion")
        .get(0);
    assert_eq!(version, CURRENT, "updated from {from}");

    // The claim made before the update is still held and can be acked.
    assert_eq!(ack(&mut c, "g", &claimed), 1);
    let mut listener = Listener::new(&db);
    let after = emit(&mut c, "order.paid");
    assert_eq!(ids_of(&listener.drain(QUIET)), [after]);
    let mut expected = before[1..].to_vec();
    expected.push(after);
    assert_eq!(drain_group(&mut c, "g"), expected);
    // The views of the update exist and read the updated tables.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM txevents.consumer_lag
              WHERE consumer = 'g' AND pending = 0 AND in_flight = 0"
        ),
        1,
        "from {from}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM txevents.outbox"),
        4,
        "from {from}"
    );
}

#[test]
fn every_released_version_updates_to_the_current_one_and_keeps_delivering() {
    let released = released();
    if released.is_empty() {
        eprintln!("no released version before {CURRENT}: only the no-op update is tested");
    }
    for (version, fixture) in &released {
        install_fixture(version, fixture);
        update_keeps_delivering(version);
    }
    update_keeps_delivering(CURRENT);
}
