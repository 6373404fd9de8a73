//! Seeded fuzz of every nscache command with random and boundary arguments, mixed
//! with plain Redis commands on the same keys, against a primary with a replica
//! attached (SPEC 7: "a seeded fuzz of random arguments (>= 20,000 commands)
//! leaves the server up and a replica's digest equal").
//!
//! What must hold:
//! - every reply is a value or an error reply; an I/O error (a dropped
//!   connection, a dead server) or a garbled reply fails the test, and so does an
//!   "internal error" reply or a panic in either server's log;
//! - both servers answer PING afterwards, on the fuzz's connections (still in
//!   step) and on fresh ones;
//! - every 5,000 commands and at the end, once the replica has processed the
//!   primary's whole stream, the two `DEBUG DIGEST`s are equal, and so is every
//!   key's `PEXPIRETIME` (the replica sometimes sleeps while the primary works,
//!   so a relative TTL would show);
//! - at each intermediate checkpoint the primary reloads its data, with DEBUG
//!   RELOAD (RDB) or DEBUG LOADAOF (AOF, rewritten now and then by the fuzz),
//!   and its digest does not change;
//! - at the end the namespaces' entry counts match the keyspace, on both servers;
//! - no client gets to run the internal NSCACHE.RESTOREENTRY;
//! - NSCACHE.KEYNAME names the key README documents, STATS JSON parses as the
//!   shared types, TOPKEYS returns no more pairs than asked.
//!
//! Environment:
//! - `NSCACHE_FUZZ_SEED`: the seed (decimal, or hex with `0x`); a fixed default
//!   otherwise. The seed is printed at the start and in every failure message.
//!   Replies depend on timing (expiry), so a seed replays the same commands only
//!   as long as the replies it feeds back (DUMP payloads) are the same.
//! - `NSCACHE_FUZZ_COMMANDS`: how many commands to send (default 20,000).
//! - `NSCACHE_FUZZ_LOG`: a file that receives every command and its reply.
//! - `NSCACHE_FUZZ_PAUSE`: on a digest mismatch, keep both servers up for ten
//!   minutes (ports in the output) for inspection.
//!
//! Expiry and the digest: a replica never expires keys by itself, it waits for
//! the primary's DEL, and `DEBUG DIGEST` only mixes in whether a key has an
//! expiry, not when. So every TTL the fuzz sets is either "short" (at most 1 s,
//! tracked) or "long" (an hour or more, never reached during a run). Before a
//! comparison the test waits until every short TTL has passed and then SCANs the
//! primary's whole keyspace, which deletes the expired keys and propagates the
//! DELs; no remaining key can expire while the digests are taken. Digests are
//! then compared at one replication offset: the primary's offset is read before
//! and after its digest, and the replica's digest is taken when its processed
//! offset equals that one (retried while background work such as the sweep or
//! replication PINGs moves the offset).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cachetx_shared::{NamespaceStats, StatsReport};
use cachetx_tests::nscache::{crc64, digest, info_field, repl_offset, sweep_idle};
use cachetx_tests::RedisServer;
use redis::{Connection, Value};

const DEFAULT_SEED: u64 = 0x6e73_6361_6368_6531;
const DEFAULT_COMMANDS: usize = 20_000;
/// How every failure message of this test starts.
const FAILED: &str = "nscache fuzz failed";
/// Commands per pipelined round trip.
const BATCH: usize = 100;
/// Commands between two digest comparisons (each followed by a reload).
const CHECKPOINT_EVERY: usize = 5_000;
/// Commands (with replies) shown when the fuzz fails.
const HISTORY: usize = 80;
/// DUMP payloads kept for later RESTOREs.
const DUMP_POOL: usize = 64;
/// Lease tokens kept for later `SET ... LEASE`.
const LEASE_POOL: usize = 32;
/// Longest TTL the fuzz calls short; every other TTL is at least an hour.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Read timeout on every connection: a hung server fails the test.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// splitmix64: small, fast, and good enough to drive a fuzz.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True once in `n` calls on average.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const GOOD_PREFIXES: &[&[u8]] = &[
    b"p",
    b"q",
    b"ns.1",
    b"A-b_9",
    b"JSON",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // 64
];

const BAD_PREFIXES: &[&[u8]] = &[
    b"",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // 65
    b"bad prefix",
    b"p:x",
    b"p{",
    b"p}",
    b"\xff",
    b"a\0b",
    b"\xc3\xa9",
    b"p\r\n",
    b"*",
];

const KEYS: &[&[u8]] = &[
    b"a",
    b"{a}",
    b"b",
    b"{a}b",
    b"a{a}",
    b"user:{7}:profile",
    b"{7}",
    b"}{y}",
    b"{{x}",
    b"a{b",
    b"x{}",
    b"a}b",
    b"{",
    b"}",
    b"{}",
    b"{}{z}",
    b"",
    b"\0",
    b"\xff\xfe\xfd",
    b"nul\0key",
    b"crlf\r\n",
    b" ",
];

const LONG_TTLS: &[&[u8]] = &[b"3600", b"86400", b"100000", b"3153600000", b"0003600"];
const BAD_TTLS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-3600",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"3153600001",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"abc",
    b"1.5",
    b"3600.0",
    b"1e3",
    b"",
    b" 60",
    b"+60",
    b"60 ",
    b"0x10",
    b"\xd9\xa3",
    b"\0",
];

const COUNTS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"3",
    b"32",
    b"1024",
    b"1025",
    b"99999999999",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"abc",
    b"",
    b"1.5",
    b" 1",
    b"+1",
    b"\0",
];

/// Options tried after NSCACHE.SET's value.
const SET_OPTIONS: &[&[&[u8]]] = &[
    &[b"NX"],
    &[b"XX"],
    &[b"nx"],
    &[b"xX"],
    &[b"NX", b"NX"],
    &[b"NX", b"XX"],
    &[b"XX", b"nx"],
    &[b"FOO"],
    &[b"LEASE"],
    &[b"LEASE", b"123"],
    &[b""],
    &[b"\0"],
    &[b"EX", b"10"],
    &[b"KEEPTTL"],
];

/// Value sizes around the allocator's size classes and the sds header limits.
const VALUE_SIZES: &[usize] = &[
    0, 1, 2, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 39, 40, 41, 47, 48, 49, 55, 56, 57, 63,
    64, 65, 79, 80, 81, 96, 100, 112, 128, 129, 160, 192, 224, 255, 256, 257, 320, 384, 448, 512,
    513, 1000, 1024, 1025, 4095, 4096, 4097, 10_000, 16_384, 65_535, 65_536, 100_000,
];

/// What the test checks in a reply beyond "a value or an error".
#[derive(Clone, Debug)]
enum Check {
    None,
    /// A DUMP whose payload goes to the RESTORE pool.
    Dump,
    /// NSCACHE.KEYNAME: the expected stored name, or None for an error.
    KeyName(Option<Vec<u8>>),
    /// NSCACHE.STATS prefix JSON: parses as the shared NamespaceStats.
    StatsJsonOne,
    /// NSCACHE.STATS JSON: parses as the shared StatsReport.
    StatsJsonAll,
    /// NSCACHE.TOPKEYS: at most this many pairs.
    TopKeys(usize),
    /// NSCACHE.FETCH of (prefix, key): a lease token in the reply goes to the
    /// pool that `SET ... LEASE` draws from.
    Fetch(Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug)]
struct Cmd {
    args: Vec<Vec<u8>>,
    check: Check,
    /// Sent to the replica too (an nscache command outside MULTI).
    to_replica: bool,
}

impl Cmd {
    fn new(args: Vec<Vec<u8>>) -> Cmd {
        Cmd {
            args,
            check: Check::None,
            to_replica: false,
        }
    }

    fn nscache(args: Vec<Vec<u8>>) -> Cmd {
        Cmd {
            args,
            check: Check::None,
            to_replica: true,
        }
    }

    fn with(mut self, check: Check) -> Cmd {
        self.check = check;
        self
    }
}

fn a(bytes: impl AsRef<[u8]>) -> Vec<u8> {
    bytes.as_ref().to_vec()
}

/// Whether `key` has a Redis Cluster hash tag (non-empty text between the first
/// `{` and the first `}` after it).
fn has_hash_tag(key: &[u8]) -> bool {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return false;
    };
    matches!(key[open + 1..].iter().position(|&b| b == b'}'), Some(n) if n > 0)
}

/// The stored name README documents for `(prefix, key)`, or None if the key is refused.
fn stored_name(prefix: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let tagged = has_hash_tag(key);
    if !tagged && (key.is_empty() || key.contains(&b'}')) {
        return None;
    }
    let mut out = prefix.to_vec();
    out.push(b':');
    if tagged {
        out.extend_from_slice(key);
    } else {
        out.push(b'{');
        out.extend_from_slice(key);
        out.push(b'}');
    }
    Some(out)
}

fn valid_prefix(prefix: &[u8]) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Escaped, shortened rendering of one argument or reply string.
fn show_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    let shown = &bytes[..bytes.len().min(48)];
    for &b in shown {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..0x7f => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > shown.len() {
        let _ = write!(out, "...({} bytes)", bytes.len());
    }
    format!("\"{out}\"")
}

fn show_cmd(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| show_bytes(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_reply(reply: &Reply) -> String {
    let list = |items: Vec<String>| -> String {
        let more = if items.len() > 6 {
            format!(", ... {} items", items.len())
        } else {
            String::new()
        };
        format!("[{}{more}]", items[..items.len().min(6)].join(", "))
    };
    match reply {
        Reply::Nil => "nil".to_string(),
        Reply::Int(i) => format!("(integer) {i}"),
        Reply::Bulk(b) => show_bytes(b),
        Reply::Simple(s) => String::from_utf8_lossy(s).into_owned(),
        Reply::Error(e) => format!("(error) {}", show_bytes(e)),
        Reply::Scalar(kind, text) => format!("({}) {}", char::from(*kind), show_bytes(text)),
        Reply::Array(items) => list(items.iter().map(show_reply).collect()),
        Reply::Map(pairs) => list(
            pairs
                .iter()
                .map(|(k, v)| format!("{} => {}", show_reply(k), show_reply(v)))
                .collect(),
        ),
    }
}

/// A reply as it came off the wire (RESP2 or RESP3), bytes as they are.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Nil,
    Int(i64),
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Bulk(Vec<u8>),
    /// Arrays, sets and pushes.
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// A double, boolean, big number or verbatim string: type byte and text.
    Scalar(u8, Vec<u8>),
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A minimal RESP client: it writes a whole pipeline and reads the replies,
/// accepting any bytes in them (Redis quotes a client's bytes verbatim in some
/// errors, e.g. for an unknown command, which a client library may refuse to
/// decode). Only a closed, silent or garbled connection is an error.
struct RawConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawConn {
    fn connect(server: &RedisServer, resp3: bool) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("set read timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let writer = stream.try_clone().expect("clone the socket");
        let mut conn = RawConn {
            reader: BufReader::with_capacity(1 << 16, stream),
            writer,
        };
        if resp3 {
            let hello = conn
                .pipeline(&[vec![a(b"HELLO"), a(b"3")]])
                .expect("HELLO 3");
            assert!(matches!(hello[0], Reply::Map(_)), "HELLO 3: {:?}", hello[0]);
        }
        conn
    }

    /// Sends every command, then reads one reply per command.
    fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> io::Result<Vec<Reply>> {
        self.send(commands)?;
        self.receive(commands.len())
    }

    /// Reads `n` replies.
    fn receive(&mut self, n: usize) -> io::Result<Vec<Reply>> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// Sends commands without reading their replies.
    fn send(&mut self, commands: &[Vec<Vec<u8>>]) -> io::Result<()> {
        let mut out = Vec::new();
        for args in commands {
            write!(out, "*{}\r\n", args.len())?;
            for arg in args {
                write!(out, "${}\r\n", arg.len())?;
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.writer.write_all(&out)
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed mid-reply after {}", show_bytes(&line)),
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let Some((&kind, rest)) = line.split_first() else {
            return Err(protocol_error("an empty reply line".to_string()));
        };
        let number = || -> io::Result<i64> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| protocol_error(format!("bad number in {}", show_bytes(&line))))
        };
        Ok(match kind {
            b'+' => Reply::Simple(rest.to_vec()),
            b'-' => Reply::Error(rest.to_vec()),
            b':' => Reply::Int(number()?),
            b'_' => Reply::Nil,
            b',' | b'#' | b'(' => Reply::Scalar(kind, rest.to_vec()),
            b'$' | b'=' | b'!' => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Nil);
                };
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(protocol_error("a bulk reply not ended by CRLF".to_string()));
                }
                data.truncate(len);
                match kind {
                    b'$' => Reply::Bulk(data),
                    b'!' => Reply::Error(data),
                    _ => Reply::Scalar(kind, data),
                }
            }
            b'*' | b'~' | b'>' => {
                let Ok(n) = usize::try_from(number()?) else {
                    return Ok(Reply::Nil);
                };
                Reply::Array(
                    (0..n)
                        .map(|_| self.read_reply())
                        .collect::<io::Result<_>>()?,
                )
            }
            b'%' | b'|' => {
                let n = number()?;
                let mut pairs = Vec::new();
                for _ in 0..n {
                    pairs.push((self.read_reply()?, self.read_reply()?));
                }
                if kind == b'|' {
                    // Attributes come before the reply they describe.
                    return self.read_reply();
                }
                Reply::Map(pairs)
            }
            other => {
                return Err(protocol_error(format!(
                    "unknown reply type {}",
                    show_bytes(&[other])
                )))
            }
        })
    }
}

struct Fuzz {
    seed: u64,
    rng: Rng,
    dumps: Vec<Vec<u8>>,
    /// Longest short TTL set by the batch being generated.
    batch_short: Option<Duration>,
    /// No short TTL set so far expires after this.
    short_deadline: Instant,
    history: VecDeque<String>,
    sent: usize,
    /// Per command name: (value replies, error replies).
    tally: BTreeMap<String, (u64, u64)>,
    /// Every command and reply, when `NSCACHE_FUZZ_LOG` names a file.
    log: Option<std::io::BufWriter<std::fs::File>>,
    /// Internal commands a client got to run (reported after the digest check).
    internal_accepted: Vec<String>,
    /// Log files of the servers, for crash reports.
    server_logs: Vec<(&'static str, std::path::PathBuf)>,
    /// (prefix, key, token) of leases FETCH granted.
    leases: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// No FLUSHALL from this many commands on, so the final checks see data.
    flush_until: usize,
}

impl Fuzz {
    fn new(seed: u64) -> Fuzz {
        Fuzz {
            seed,
            rng: Rng(seed),
            dumps: Vec::new(),
            batch_short: None,
            short_deadline: Instant::now(),
            history: VecDeque::new(),
            sent: 0,
            tally: BTreeMap::new(),
            log: std::env::var_os("NSCACHE_FUZZ_LOG")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    std::io::BufWriter::new(
                        std::fs::File::create(&p)
                            .unwrap_or_else(|e| panic!("create NSCACHE_FUZZ_LOG {p:?}: {e}")),
                    )
                }),
            internal_accepted: Vec::new(),
            server_logs: Vec::new(),
            leases: Vec::new(),
            flush_until: usize::MAX,
        }
    }

    fn fail(&self, what: &str) -> ! {
        let history: Vec<&str> = self.history.iter().map(String::as_str).collect();
        panic!(
            "{FAILED} (seed {seed:#x}; rerun with NSCACHE_FUZZ_SEED={seed:#x}) \
             after {sent} commands: {what}\n--- last {n} commands (-> reply) ---\n{}{}",
            history.join("\n"),
            self.crash_reports(),
            seed = self.seed,
            sent = self.sent,
            n = history.len(),
        );
    }

    /// The crash reports in the servers' logs, if any; each whole log is also
    /// copied to /tmp, since the servers' directories go when the test ends.
    fn crash_reports(&self) -> String {
        let mut out = String::new();
        for (name, path) in &self.server_logs {
            let Ok(log) = std::fs::read(path) else {
                continue;
            };
            let log = String::from_utf8_lossy(&log);
            let Some(start) = log.find("=== REDIS BUG REPORT START") else {
                continue;
            };
            let copy = format!("/tmp/nscache-fuzz-{:x}-{name}.log", self.seed);
            let saved = match std::fs::write(&copy, log.as_bytes()) {
                Ok(()) => format!("whole log in {copy}"),
                Err(e) => format!("could not save the log to {copy}: {e}"),
            };
            let report: Vec<&str> = log[start..].lines().take(120).collect();
            let _ = write!(
                out,
                "\n--- the {name} crashed ({saved}) ---\n{}",
                report.join("\n")
            );
        }
        out
    }

    fn remember(&mut self, line: String) {
        if let Some(log) = self.log.as_mut() {
            use std::io::Write as _;
            writeln!(log, "{line}").expect("write NSCACHE_FUZZ_LOG");
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line);
    }

    fn short(&mut self, ttl: Duration) {
        assert!(ttl <= SHORT_TTL, "a short ttl of {ttl:?}");
        self.batch_short = Some(self.batch_short.map_or(ttl, |t| t.max(ttl)));
    }

    fn prefix(&mut self) -> Vec<u8> {
        if self.rng.one_in(12) {
            a(self.rng.pick(BAD_PREFIXES))
        } else {
            a(self.rng.pick(GOOD_PREFIXES))
        }
    }

    fn good_prefix(&mut self) -> Vec<u8> {
        a(self.rng.pick(GOOD_PREFIXES))
    }

    fn key(&mut self) -> Vec<u8> {
        match self.rng.below(1000) {
            0..450 => a(self.rng.pick(KEYS)),
            450..700 => {
                // Short keys over an alphabet rich in hash-tag characters.
                let len = self.rng.below(5);
                (0..len).map(|_| *self.rng.pick(b"ab{}\0\xff:")).collect()
            }
            700..960 => format!("k{}", self.rng.below(40)).into_bytes(),
            960..998 => {
                let len = *self
                    .rng
                    .pick(&[31usize, 32, 63, 64, 200, 255, 256, 1000, 4096]);
                let mut key = vec![b'L'; len];
                if self.rng.one_in(2) {
                    key.extend_from_slice(b"{t}");
                }
                key
            }
            _ => vec![b'H'; 65_536 + self.rng.below(8)],
        }
    }

    fn value(&mut self) -> Vec<u8> {
        let len = if self.rng.one_in(1500) {
            *self
                .rng
                .pick(&[(1usize << 20) - 40, (1 << 20) - 24, 1 << 20, (1 << 20) + 1])
        } else if self.rng.one_in(3) {
            self.rng.below(40)
        } else {
            *self.rng.pick(VALUE_SIZES)
        };
        match self.rng.below(4) {
            0 => self.rng.bytes(len),
            1 => vec![0; len],
            2 => vec![0xff; len],
            _ => vec![b'v'; len],
        }
    }

    fn ttl(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..78 => a(self.rng.pick(LONG_TTLS)),
            78..86 => {
                self.short(Duration::from_secs(1));
                a(b"1")
            }
            _ => a(self.rng.pick(BAD_TTLS)),
        }
    }

    /// A Redis key name: mostly the stored name of some entry, sometimes a plain name.
    fn name(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..85 => {
                let prefix = self.good_prefix();
                let key = self.key();
                stored_name(&prefix, &key)
                    .unwrap_or_else(|| stored_name(&prefix, b"a").expect("valid"))
            }
            85..95 => a(self.rng.pick(&[
                &b"plain"[..],
                b"p:{plain}",
                b"p:x",
                b"q:{a}x",
                b"p:{}",
                b"p:",
            ])),
            _ => {
                let len = self.rng.below(6);
                self.rng.bytes(len)
            }
        }
    }

    /// Occasionally drops or adds an argument, so every arity path is hit.
    fn mangle(&mut self, mut args: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, bool) {
        match self.rng.below(40) {
            0 if args.len() > 1 => {
                let n = 1 + self.rng.below(args.len() - 1);
                args.truncate(n);
                (args, true)
            }
            1 => {
                let junk = a(*self
                    .rng
                    .pick(&[&b"JSON"[..], b"NX", b"", b"junk", b"\0\xff"]));
                args.push(junk);
                (args, true)
            }
            _ => (args, false),
        }
    }

    fn nscache_command(&mut self) -> Cmd {
        let pick = self.rng.below(1000);
        let (args, check) = match pick {
            0..300 if !self.leases.is_empty() && self.rng.one_in(6) => {
                // A write-back with a token a FETCH handed out (SPEC 2.4), to
                // its own key or, sometimes, to another.
                let i = self.rng.below(self.leases.len());
                let (prefix, mut key, token) = self.leases[i].clone();
                if self.rng.one_in(4) {
                    key = self.key();
                }
                let args = vec![
                    a(b"NSCACHE.SET"),
                    prefix,
                    key,
                    self.ttl(),
                    self.value(),
                    a(b"LEASE"),
                    token,
                ];
                (args, Check::None)
            }
            0..300 => {
                let mut args = vec![
                    a(b"NSCACHE.SET"),
                    self.prefix(),
                    self.key(),
                    self.ttl(),
                    self.value(),
                ];
                if self.rng.one_in(5) {
                    let options = *self.rng.pick(SET_OPTIONS);
                    args.extend(options.iter().map(a));
                }
                (args, Check::None)
            }
            300..440 => (
                vec![a(b"NSCACHE.GET"), self.prefix(), self.key()],
                Check::None,
            ),
            440..500 => {
                let mut args = vec![a(b"NSCACHE.MGET"), self.prefix()];
                for _ in 0..1 + self.rng.below(6) {
                    args.push(self.key());
                }
                (args, Check::None)
            }
            500..560 => {
                let mut args = vec![a(b"NSCACHE.DEL"), self.prefix()];
                for _ in 0..1 + self.rng.below(4) {
                    args.push(self.key());
                }
                (args, Check::None)
            }
            560..610 => (
                vec![a(b"NSCACHE.TTL"), self.prefix(), self.key()],
                Check::None,
            ),
            610..630 => (vec![a(b"NSCACHE.INVALIDATE"), self.prefix()], Check::None),
            630..690 => {
                let form = self.rng.below(6);
                let mut args = vec![a(b"NSCACHE.STATS")];
                let prefix = self.prefix();
                let good = valid_prefix(&prefix);
                let check = match form {
                    0 => Check::None,
                    1 => {
                        args.push(prefix);
                        Check::None
                    }
                    2 => {
                        args.push(prefix);
                        args.push(a(b"JSON"));
                        if good {
                            Check::StatsJsonOne
                        } else {
                            Check::None
                        }
                    }
                    3 => {
                        args.push(a(b"json"));
                        Check::StatsJsonAll
                    }
                    4 => {
                        args.push(prefix);
                        args.push(a(self.rng.pick(&[&b"BOGUS"[..], b"", b"JSONX", b"\0"])));
                        Check::None
                    }
                    _ => {
                        args.push(prefix.clone());
                        args.push(prefix);
                        args.push(a(b"JSON"));
                        Check::None
                    }
                };
                (args, check)
            }
            690..750 => {
                let mut args = vec![a(b"NSCACHE.TOPKEYS"), self.prefix()];
                let mut max = 1024;
                if !self.rng.one_in(4) {
                    let count = a(self.rng.pick(COUNTS));
                    max = std::str::from_utf8(&count)
                        .ok()
                        .and_then(|c| c.parse::<usize>().ok())
                        .unwrap_or(usize::MAX);
                    args.push(count);
                }
                (args, Check::TopKeys(max.min(1024)))
            }
            750..770 => {
                let mut args = vec![a(b"NSCACHE.RESETSTATS")];
                if self.rng.one_in(2) {
                    args.push(self.prefix());
                }
                (args, Check::None)
            }
            770..850 => {
                let prefix = self.prefix();
                let key = self.key();
                let expected = if valid_prefix(&prefix) {
                    stored_name(&prefix, &key)
                } else {
                    None
                };
                (
                    vec![a(b"NSCACHE.KEYNAME"), prefix, key],
                    Check::KeyName(expected),
                )
            }
            850..885 => (vec![a(b"NSCACHE.FORGET"), self.prefix()], Check::None),
            885..920 => {
                // SPEC 2.4; an unknown-command error until it exists.
                let (prefix, key) = (self.prefix(), self.key());
                let check = Check::Fetch(prefix.clone(), key.clone());
                let mut args = vec![
                    a(b"NSCACHE.FETCH"),
                    prefix,
                    key,
                    a(self.rng.pick(&[
                        &b"1000"[..],
                        b"1000",
                        b"60000",
                        b"10",
                        b"0",
                        b"-1",
                        b"abc",
                        b"9223372036854775807",
                    ])),
                ];
                if self.rng.one_in(2) {
                    args.push(a(b"REFRESH"));
                    args.push(a(self.rng.pick(&[&b"500"[..], b"0", b"99999999999", b"x"])));
                }
                (args, check)
            }
            _ => {
                let form = a(self.rng.pick(&[&b"0"[..], b"1", b"2", b"", b"01"]));
                (
                    vec![
                        a(b"NSCACHE.RESTOREENTRY"),
                        self.name(),
                        self.prefix(),
                        form,
                        self.value(),
                    ],
                    Check::None,
                )
            }
        };
        let (args, mangled) = self.mangle(args);
        let check = if mangled {
            match check {
                Check::KeyName(_) => Check::KeyName(None),
                Check::StatsJsonOne | Check::StatsJsonAll => Check::None,
                // A dropped count argument means the default count.
                Check::TopKeys(_) => Check::TopKeys(1024),
                other => other,
            }
        } else {
            check
        };
        Cmd::nscache(args).with(check)
    }

    fn expire_command(&mut self) -> Cmd {
        let name = self.name();
        let (cmd, amount): (&[u8], Vec<u8>) = match self.rng.below(8) {
            0 | 1 => {
                let secs = match self.rng.below(10) {
                    0..5 => a(self.rng.pick(&[&b"3600"[..], b"100000"])),
                    5..7 => {
                        self.short(Duration::from_secs(1));
                        a(b"1")
                    }
                    7 | 8 => a(self.rng.pick(&[&b"0"[..], b"-1"])),
                    _ => a(self.rng.pick(&[&b"abc"[..], b"9223372036854775807", b""])),
                };
                (b"EXPIRE", secs)
            }
            2 | 3 => {
                let ms = if self.rng.one_in(2) {
                    let ms = 1 + self.rng.below(1000);
                    self.short(Duration::from_millis(ms as u64));
                    ms
                } else {
                    3_600_000
                };
                (b"PEXPIRE", ms.to_string().into_bytes())
            }
            4 => {
                let at = if self.rng.one_in(3) {
                    1
                } else {
                    unix_ms() / 1000 + 7200
                };
                (b"EXPIREAT", at.to_string().into_bytes())
            }
            5 => {
                let at = unix_ms() + 7_200_000;
                (b"PEXPIREAT", at.to_string().into_bytes())
            }
            _ => return Cmd::new(vec![a(b"PERSIST"), name]),
        };
        let mut args = vec![a(cmd), name, amount];
        if self.rng.one_in(5) {
            args.push(a(self.rng.pick(&[&b"NX"[..], b"XX", b"GT", b"LT"])));
        }
        Cmd::new(args)
    }

    fn restore_command(&mut self) -> Cmd {
        let mut payload = if self.dumps.is_empty() {
            self.rng.bytes(20)
        } else {
            let i = self.rng.below(self.dumps.len());
            self.dumps[i].clone()
        };
        // Corrupt the module's part (after the type byte and the module id),
        // keeping the CRC valid so the payload reaches the module's rdb_load.
        // Only module payloads (type 7, RDB_TYPE_MODULE_2): with Redis's default
        // `sanitize-dump-payload no` a corrupt hash or list is trusted and
        // crashes Redis later, which is Redis's documented trade-off.
        if payload.len() > 20 && payload[0] == 7 && self.rng.one_in(3) {
            let body_end = payload.len() - 10;
            match self.rng.below(3) {
                0 => {
                    let i = 9 + self.rng.below(body_end - 9);
                    payload[i] = self.rng.next() as u8;
                }
                1 => {
                    let cut = 9 + self.rng.below(body_end - 9);
                    let tail = payload[body_end..body_end + 2].to_vec();
                    payload.truncate(cut);
                    payload.extend_from_slice(&tail);
                    payload.extend_from_slice(&[0; 8]);
                }
                _ => {
                    let i = 9 + self.rng.below(body_end - 9);
                    let n = 1 + self.rng.below(4);
                    let junk = self.rng.bytes(n);
                    payload.splice(i..i, junk);
                }
            }
            let crc_at = payload.len() - 8;
            let crc = crc64(&payload[..crc_at]);
            payload[crc_at..].copy_from_slice(&crc.to_le_bytes());
        }
        let name = self.name();
        let mut args = vec![a(b"RESTORE"), name];
        let abs = self.rng.one_in(5);
        let ttl: i64 = match self.rng.below(4) {
            0 | 1 => 0,
            2 if abs => unix_ms() + 7_200_000,
            2 => 7_200_000,
            _ if abs => 1,
            _ => {
                let ms = 1 + self.rng.below(1000);
                self.short(Duration::from_millis(ms as u64));
                ms as i64
            }
        };
        args.push(ttl.to_string().into_bytes());
        args.push(payload);
        if self.rng.one_in(2) {
            args.push(a(b"REPLACE"));
        }
        if abs {
            args.push(a(b"ABSTTL"));
        }
        Cmd::new(args)
    }

    fn plain_command(&mut self) -> Cmd {
        match self.rng.below(100) {
            0..10 => {
                let cmd = a(self.rng.pick(&[&b"DEL"[..], b"UNLINK"]));
                let mut args = vec![cmd];
                for _ in 0..1 + self.rng.below(3) {
                    args.push(self.name());
                }
                Cmd::new(args)
            }
            10..28 => self.expire_command(),
            28..38 => {
                let cmd = a(self.rng.pick(&[&b"RENAME"[..], b"RENAME", b"RENAMENX"]));
                Cmd::new(vec![cmd, self.name(), self.name()])
            }
            38..46 => {
                let mut args = vec![a(b"COPY"), self.name(), self.name()];
                if self.rng.one_in(2) {
                    args.push(a(b"REPLACE"));
                }
                if self.rng.one_in(8) {
                    args.push(a(b"DB"));
                    args.push(a(b"1"));
                }
                Cmd::new(args)
            }
            46..52 => Cmd::new(vec![a(b"TYPE"), self.name()]),
            52..58 => {
                let sub = a(*self
                    .rng
                    .pick(&[&b"ENCODING"[..], b"REFCOUNT", b"IDLETIME", b"FREQ"]));
                Cmd::new(vec![a(b"OBJECT"), sub, self.name()])
            }
            58..66 => {
                let mut args = vec![a(b"MEMORY"), a(b"USAGE"), self.name()];
                if self.rng.one_in(3) {
                    args.push(a(b"SAMPLES"));
                    args.push(a(b"0"));
                }
                Cmd::new(args)
            }
            66..74 => Cmd::new(vec![a(b"DUMP"), self.name()]).with(Check::Dump),
            74..84 => self.restore_command(),
            84..88 => {
                let pattern = a(self.rng.pick(&[&b"*"[..], b"p:*", b"*{a}*", b"q:\\{*"]));
                let mut args = vec![
                    a(b"SCAN"),
                    self.rng.below(64).to_string().into_bytes(),
                    a(b"MATCH"),
                    pattern,
                    a(b"COUNT"),
                    a(b"20"),
                ];
                if self.rng.one_in(2) {
                    args.push(a(b"TYPE"));
                    args.push(a(b"nscache-e"));
                }
                Cmd::new(args)
            }
            88..91 => {
                let name = self.name();
                let value = self.value();
                Cmd::new(vec![a(b"SET"), name, value])
            }
            91 => {
                // Other types at an entry's name: WRONGTYPE for nscache.
                let name = self.name();
                match self.rng.below(3) {
                    0 => Cmd::new(vec![a(b"LPUSH"), name, a(b"x")]),
                    1 => Cmd::new(vec![a(b"HSET"), name, a(b"f"), a(b"v")]),
                    _ => Cmd::new(vec![a(b"MOVE"), name, a(b"1")]),
                }
            }
            92 => {
                let sub = a(self.rng.pick(&[&b"DIGEST-VALUE"[..], b"OBJECT"]));
                Cmd::new(vec![a(b"DEBUG"), sub, self.name()])
            }
            93 => Cmd::new(vec![a(b"INFO"), a(b"nscache")]),
            _ => {
                // A module command run from a script (effects replication, and a
                // read-only script may not reclaim stale entries).
                let inner = self.nscache_command();
                let eval = a(self.rng.pick(&[&b"EVAL"[..], b"EVAL_RO"]));
                let mut args = vec![eval, a(b"return redis.pcall(unpack(ARGV))"), a(b"0")];
                args.extend(inner.args);
                Cmd::new(args)
            }
        }
    }

    /// Commands that change the whole server: rare.
    fn rare_command(&mut self) -> Option<Cmd> {
        if self.rng.one_in(10_000) && self.sent < self.flush_until {
            let mut args = vec![a(b"FLUSHALL")];
            if self.rng.one_in(4) {
                args.push(a(b"SYNC"));
            } else {
                args.push(a(b"ASYNC"));
            }
            return Some(Cmd::new(args));
        }
        if self.rng.one_in(8_000) {
            return Some(Cmd::new(vec![a(b"SWAPDB"), a(b"0"), a(b"1")]));
        }
        if self.rng.one_in(2_000) {
            // The module's rdb_save and aof_rewrite, in a fork.
            let what = a(self.rng.pick(&[&b"BGREWRITEAOF"[..], b"BGSAVE"]));
            return Some(Cmd::new(vec![what]));
        }
        if self.rng.one_in(3_000) {
            // The sweep and the reclaim on read must hold off while writes are paused.
            let ms = (1 + self.rng.below(20)).to_string().into_bytes();
            return Some(Cmd::new(vec![a(b"CLIENT"), a(b"PAUSE"), ms, a(b"WRITE")]));
        }
        if self.rng.one_in(300) {
            let (name, values): (&[u8], &[&[u8]]) = match self.rng.below(5) {
                3 => (b"nscache.publish-invalidations", &[b"yes", b"no", b"maybe"]),
                // Evictions under a small limit (allkeys-lru, set at start).
                4 => (b"maxmemory", &[b"0", b"0", b"5mb", b"7mb"]),
                0 => (
                    b"nscache.topk",
                    &[
                        b"1", b"2", b"8", b"32", b"32", b"1024", b"0", b"1025", b"-1", b"abc",
                    ],
                ),
                1 => (
                    b"nscache.max-namespaces",
                    &[
                        b"1", b"3", b"1024", b"1024", b"1024", b"1000000", b"0", b"abc",
                    ],
                ),
                _ => (b"nscache.sweep-budget", &[b"10", b"1000", b"1000", b"5"]),
            };
            let value = a(self.rng.pick(values));
            return Some(Cmd::new(vec![a(b"CONFIG"), a(b"SET"), a(name), value]));
        }
        None
    }

    /// One batch of commands; MULTI blocks are kept whole.
    fn batch(&mut self) -> Vec<Cmd> {
        let mut batch = Vec::with_capacity(BATCH + 8);
        while batch.len() < BATCH {
            if let Some(cmd) = self.rare_command() {
                batch.push(cmd);
                continue;
            }
            if self.rng.one_in(60) {
                batch.push(Cmd::new(vec![a(b"MULTI")]));
                for _ in 0..1 + self.rng.below(4) {
                    let mut cmd = self.nscache_command();
                    cmd.to_replica = false;
                    cmd.check = Check::None; // the reply is QUEUED
                    batch.push(cmd);
                }
                batch.push(Cmd::new(vec![a(b"EXEC")]));
                continue;
            }
            let cmd = if self.rng.below(100) < 65 {
                self.nscache_command()
            } else {
                self.plain_command()
            };
            batch.push(cmd);
        }
        batch
    }

    /// Sends one batch, pipelined, and checks every reply.
    fn run_batch(&mut self, primary: &mut RawConn, replica: &mut RawConn, batch: &[Cmd]) {
        // Now and then the replica sleeps while the primary runs the batch, so
        // it applies the stream well after the primary did: a write replicated
        // with a relative TTL would then get another expiry there.
        let replica_sleeps = self.rng.one_in(8);
        if replica_sleeps {
            let sleep = vec![a(b"DEBUG"), a(b"SLEEP"), a(b"0.02")];
            if let Err(e) = replica.send(&[sleep]) {
                self.fail(&format!("DEBUG SLEEP on the replica: {e}"));
            }
        }
        let commands: Vec<Vec<Vec<u8>>> = batch.iter().map(|c| c.args.clone()).collect();
        let replies = match primary.pipeline(&commands) {
            Ok(replies) => replies,
            Err(e) => {
                for cmd in batch {
                    self.remember(format!("{} -> (batch not answered)", show_cmd(&cmd.args)));
                }
                self.fail(&format!("the primary did not answer a batch: {e}"))
            }
        };
        if let Some(short) = self.batch_short.take() {
            self.short_deadline = self.short_deadline.max(Instant::now() + short);
        }
        if replica_sleeps {
            match replica.receive(1) {
                Ok(reply) if matches!(&reply[..], [Reply::Simple(ok)] if ok == b"OK") => {}
                other => self.fail(&format!("DEBUG SLEEP on the replica: {other:?}")),
            }
        }
        for (cmd, reply) in batch.iter().zip(&replies) {
            self.sent += 1;
            self.remember(format!("{} -> {}", show_cmd(&cmd.args), show_reply(reply)));
            let name = String::from_utf8_lossy(&cmd.args[0]).to_uppercase();
            let counts = self.tally.entry(name).or_default();
            if matches!(reply, Reply::Error(_)) {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
            self.check(cmd, reply);
        }

        // The replica gets the nscache commands too: reads must not change its
        // data (stale entries are the primary's to delete), writes are refused.
        let to_replica: Vec<&Cmd> = batch.iter().filter(|c| c.to_replica).collect();
        if to_replica.is_empty() {
            return;
        }
        let commands: Vec<Vec<Vec<u8>>> = to_replica.iter().map(|c| c.args.clone()).collect();
        match replica.pipeline(&commands) {
            Ok(replies) => {
                for (cmd, reply) in to_replica.iter().zip(&replies) {
                    if cmd.args[0].ends_with(b"SET") && !matches!(reply, Reply::Error(_)) {
                        self.fail(&format!(
                            "the replica accepted {} -> {}",
                            show_cmd(&cmd.args),
                            show_reply(reply)
                        ));
                    }
                }
            }
            Err(e) => {
                for cmd in to_replica {
                    self.remember(format!("replica: {}", show_cmd(&cmd.args)));
                }
                self.fail(&format!("the replica did not answer a batch: {e}"))
            }
        }
    }

    fn check(&mut self, cmd: &Cmd, reply: &Reply) {
        let is_error = matches!(reply, Reply::Error(_));
        // A panic the module caught (or an invariant it found broken) is a bug
        // even though the server survived it.
        if let Reply::Error(text) = reply {
            if text.windows(14).any(|w| w == b"internal error") {
                self.fail(&format!("{} -> {}", show_cmd(&cmd.args), show_reply(reply)));
            }
        }
        let queued = matches!(reply, Reply::Simple(s) if s == b"QUEUED");
        if cmd.args[0].eq_ignore_ascii_case(b"NSCACHE.RESTOREENTRY") && !is_error && !queued {
            self.internal_accepted.push(format!(
                "{} -> {}",
                show_cmd(&cmd.args),
                show_reply(reply)
            ));
        }
        match &cmd.check {
            Check::None => {}
            Check::Dump => {
                if let Reply::Bulk(payload) = reply {
                    if payload.len() <= 200_000 {
                        if self.dumps.len() == DUMP_POOL {
                            let i = self.rng.below(DUMP_POOL);
                            self.dumps[i] = payload.clone();
                        } else {
                            self.dumps.push(payload.clone());
                        }
                    }
                }
            }
            Check::KeyName(expected) => {
                let ok = match (expected, reply) {
                    (Some(name), Reply::Bulk(got)) => name == got,
                    (None, _) => is_error,
                    _ => false,
                };
                if !ok {
                    self.fail(&format!(
                        "NSCACHE.KEYNAME: expected {}, got {}",
                        expected
                            .as_deref()
                            .map_or("an error".to_string(), show_bytes),
                        show_reply(reply)
                    ));
                }
            }
            Check::StatsJsonOne | Check::StatsJsonAll => {
                let Reply::Bulk(json) = reply else {
                    // "too many namespaces" is not possible for STATS; any error is wrong.
                    self.fail(&format!("STATS JSON replied {}", show_reply(reply)));
                };
                let json = String::from_utf8_lossy(json);
                let parsed = if matches!(cmd.check, Check::StatsJsonOne) {
                    NamespaceStats::parse(&json).map(|_| ())
                } else {
                    StatsReport::parse(&json).map(|_| ())
                };
                if let Err(e) = parsed {
                    self.fail(&format!("STATS JSON does not parse: {e}: {json}"));
                }
            }
            Check::Fetch(prefix, key) => {
                // [MISS, token] or [REFRESH, value, token].
                if let Reply::Array(items) = reply {
                    let granted = matches!(items.first(),
                        Some(Reply::Bulk(kind) | Reply::Simple(kind))
                            if kind.eq_ignore_ascii_case(b"MISS") || kind.eq_ignore_ascii_case(b"REFRESH"));
                    let token = match items.last() {
                        Some(Reply::Bulk(t) | Reply::Simple(t)) => Some(t.clone()),
                        Some(Reply::Int(t)) => Some(t.to_string().into_bytes()),
                        _ => None,
                    };
                    if let (true, Some(token)) = (granted && items.len() >= 2, token) {
                        let lease = (prefix.clone(), key.clone(), token);
                        if self.leases.len() == LEASE_POOL {
                            let i = self.rng.below(LEASE_POOL);
                            self.leases[i] = lease;
                        } else {
                            self.leases.push(lease);
                        }
                    }
                }
            }
            Check::TopKeys(max) => {
                if let Reply::Array(items) = reply {
                    if items.len() % 2 != 0 || items.len() / 2 > *max {
                        self.fail(&format!(
                            "TOPKEYS replied {} items for at most {max} pairs",
                            items.len()
                        ));
                    }
                }
            }
        }
    }
}

fn ping(conn: &mut Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

fn connect(server: &RedisServer) -> Connection {
    let conn = server.conn();
    conn.set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("set read timeout");
    conn
}

/// Every key of databases 0..16, with SCAN (which also deletes the expired keys
/// it meets on a primary).
fn all_keys(server: &RedisServer) -> BTreeSet<(u8, Vec<u8>)> {
    let mut conn = connect(server);
    let mut keys = BTreeSet::new();
    for db in 0..16u8 {
        let () = redis::cmd("SELECT")
            .arg(db)
            .query(&mut conn)
            .expect("SELECT");
        let found: Vec<Vec<u8>> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .expect("SCAN")
            .collect::<Result<_, _>>()
            .expect("SCAN item");
        keys.extend(found.into_iter().map(|k| (db, k)));
    }
    keys
}

/// What differs between the two servers, key by key (for the failure message).
fn describe_difference(primary: &RedisServer, replica: &RedisServer) -> String {
    let (pk, rk) = (all_keys(primary), all_keys(replica));
    let mut out = String::new();
    for key in pk.symmetric_difference(&rk).take(20) {
        let side = if pk.contains(key) {
            "only on the primary"
        } else {
            "only on the replica"
        };
        let _ = writeln!(out, "db {} key {} {side}", key.0, show_bytes(&key.1));
    }
    let (mut p, mut r) = (connect(primary), connect(replica));
    let mut shown = 0;
    for (db, key) in pk.intersection(&rk) {
        let describe = |conn: &mut Connection| -> String {
            let () = redis::cmd("SELECT").arg(*db).query(conn).expect("SELECT");
            let digest: Vec<Value> = redis::cmd("DEBUG")
                .arg("DIGEST-VALUE")
                .arg(key.as_slice())
                .query(conn)
                .expect("DIGEST-VALUE");
            let kind: String = redis::cmd("TYPE")
                .arg(key.as_slice())
                .query(conn)
                .expect("TYPE");
            let pttl: i64 = redis::cmd("PEXPIRETIME")
                .arg(key.as_slice())
                .query(conn)
                .expect("PEXPIRETIME");
            format!("{kind} pexpiretime {pttl} digest {digest:?}")
        };
        let (dp, dr) = (describe(&mut p), describe(&mut r));
        if dp != dr {
            let _ = writeln!(
                out,
                "db {db} key {}: primary {dp}, replica {dr}",
                show_bytes(key)
            );
            shown += 1;
            if shown == 20 {
                break;
            }
        }
    }
    let _ = writeln!(
        out,
        "{} keys on the primary, {} on the replica (SCAN hides a replica's logically expired keys)",
        pk.len(),
        rk.len()
    );
    for (name, conn) in [("primary", &mut p), ("replica", &mut r)] {
        let keyspace: String = redis::cmd("INFO")
            .arg("keyspace")
            .query(conn)
            .expect("INFO keyspace");
        let _ = writeln!(
            out,
            "{name} INFO keyspace: {}",
            keyspace.trim().replace("\r\n", "; ")
        );
    }
    if std::env::var_os("NSCACHE_FUZZ_PAUSE").is_some() {
        eprintln!(
            "{out}NSCACHE_FUZZ_PAUSE: primary on port {}, replica on port {}; pausing 10 minutes",
            primary.port(),
            replica.port()
        );
        std::thread::sleep(Duration::from_secs(600));
    }
    out
}

/// Waits until the replica has processed everything the primary sent, and
/// returns both digests taken at that same replication offset.
fn digests_at_one_offset(p: &mut Connection, r: &mut Connection) -> Option<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let before = repl_offset(p, "master_repl_offset");
        let primary_digest = digest(p);
        if repl_offset(p, "master_repl_offset") != before {
            continue;
        }
        let caught_up = Instant::now() + Duration::from_secs(10);
        while repl_offset(r, "slave_repl_offset") < before && Instant::now() < caught_up {
            std::thread::sleep(Duration::from_millis(20));
        }
        let r_before = repl_offset(r, "slave_repl_offset");
        let replica_digest = digest(r);
        let r_after = repl_offset(r, "slave_repl_offset");
        if r_before == before && r_after == before {
            return Some((primary_digest, replica_digest));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `entries` of every namespace, from `NSCACHE.STATS JSON`.
fn entries_by_namespace(conn: &mut Connection) -> BTreeMap<String, u64> {
    let json: String = redis::cmd("NSCACHE.STATS")
        .arg("JSON")
        .query(conn)
        .expect("NSCACHE.STATS JSON");
    let report = StatsReport::parse(&json).expect("StatsReport");
    report
        .namespaces
        .into_iter()
        .map(|ns| (ns.prefix, ns.entries))
        .collect()
}

/// What a checkpoint does after comparing the digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reload {
    /// Nothing.
    No,
    /// DEBUG RELOAD: save an RDB and load it.
    Rdb,
    /// DEBUG LOADAOF: load the AOF (an RDB preamble after a rewrite, then
    /// commands, including the module's NSCACHE.RESTOREENTRY).
    Aof,
}

/// Brings the pair to a state where digests can be compared (every short TTL
/// passed and its key deleted by the primary, the sweep idle, no fork running),
/// compares them, and then reloads the primary's data as `reload` says: the
/// primary's digest must not change. Returns the primary's keys.
///
/// Reloads wait for this state on purpose: a primary that loads an RDB drops
/// the keys that expired meanwhile without propagating a DEL, so a reload with
/// expired keys pending would make the replica diverge by design of Redis, not
/// of the module.
fn checkpoint(
    fuzz: &mut Fuzz,
    primary: &RedisServer,
    replica: &RedisServer,
    p: &mut Connection,
    r: &mut Connection,
    reload: Reload,
) -> BTreeSet<(u8, Vec<u8>)> {
    // The fuzz may have left a tiny sweep budget, or a memory limit that keeps
    // evicting.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.sweep-budget")
        .arg("1000")
        .arg("maxmemory")
        .arg("0")
        .query(p)
        .expect("CONFIG SET");
    let now = Instant::now();
    if fuzz.short_deadline > now {
        std::thread::sleep(fuzz.short_deadline - now + Duration::from_millis(20));
    }
    let keys = all_keys(primary);
    cachetx_tests::wait_until(Duration::from_secs(30), "sweep done on the primary", || {
        sweep_idle(p)
    });
    let Some((dp, dr)) = digests_at_one_offset(p, r) else {
        fuzz.fail("the replica never reached the primary's replication offset");
    };
    if dp != dr {
        let detail = describe_difference(primary, replica);
        fuzz.fail(&format!(
            "DEBUG DIGEST differs: primary {dp}, replica {dr}\n{detail}"
        ));
    }
    // DEBUG DIGEST sees only whether a key expires; the times must match too.
    for (db, key) in &keys {
        let at = |conn: &mut Connection| -> i64 {
            let () = redis::cmd("SELECT").arg(*db).query(conn).expect("SELECT");
            redis::cmd("PEXPIRETIME")
                .arg(key.as_slice())
                .query(conn)
                .expect("PEXPIRETIME")
        };
        let (on_p, on_r) = (at(p), at(r));
        if on_p != on_r {
            fuzz.fail(&format!(
                "db {db} key {}: PEXPIRETIME {on_p} on the primary, {on_r} on the replica",
                show_bytes(key)
            ));
        }
    }
    for conn in [&mut *p, &mut *r] {
        let () = redis::cmd("SELECT").arg(0).query(conn).expect("SELECT");
    }
    let how = match reload {
        Reload::No => return keys,
        Reload::Rdb => "RELOAD",
        Reload::Aof => "LOADAOF",
    };
    cachetx_tests::wait_until(Duration::from_secs(30), "no fork running", || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(p)
            .expect("INFO persistence");
        [
            "rdb_bgsave_in_progress:0",
            "aof_rewrite_in_progress:0",
            "aof_rewrite_scheduled:0",
        ]
        .iter()
        .all(|want| info.lines().any(|l| l.trim() == *want))
    });
    fuzz.remember(format!("DEBUG {how} (checkpoint)"));
    let reloaded: redis::RedisResult<()> = redis::cmd("DEBUG").arg(how).query(p);
    if let Err(e) = reloaded {
        fuzz.fail(&format!("DEBUG {how} failed: {e}"));
    }
    // Loading may leave invalidated entries for the sweep (their deletion is
    // logged after them); the digest counts them as such, but compare the
    // settled state.
    cachetx_tests::wait_until(
        Duration::from_secs(30),
        "sweep done after the reload",
        || sweep_idle(p),
    );
    let after = digest(p);
    if after != dp {
        fuzz.fail(&format!(
            "DEBUG {how} changed the primary's digest from {dp} to {after}"
        ));
    }
    keys
}

/// [`checkpoint`], with any failure of its plain Redis calls (a server that
/// died meanwhile) reported like the fuzz's own failures: seed, last commands,
/// crash report.
fn guarded_checkpoint(
    fuzz: &mut Fuzz,
    primary: &RedisServer,
    replica: &RedisServer,
    p: &mut Connection,
    r: &mut Connection,
    reload: Reload,
) -> BTreeSet<(u8, Vec<u8>)> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checkpoint(fuzz, primary, replica, p, r, reload)
    }));
    match outcome {
        Ok(keys) => keys,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if message.starts_with(FAILED) {
                std::panic::resume_unwind(panic);
            }
            fuzz.fail(&format!("at a checkpoint: {message}"))
        }
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("NSCACHE_FUZZ_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("NSCACHE_FUZZ_SEED={s:?} is not a u64: {e}"))
        }
        _ => DEFAULT_SEED,
    }
}

fn commands_from_env() -> usize {
    match std::env::var("NSCACHE_FUZZ_COMMANDS") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("NSCACHE_FUZZ_COMMANDS={s:?}: {e}")),
        _ => DEFAULT_COMMANDS,
    }
}

#[test]
fn random_arguments_leave_the_server_up_and_the_replica_equal() {
    let seed = seed_from_env();
    let total = commands_from_env();
    eprintln!("nscache fuzz: seed {seed:#x} (set NSCACHE_FUZZ_SEED to replay), {total} commands");

    // No diskless-sync delay: the replica's first full sync takes 5 s otherwise.
    // With an AOF, for BGREWRITEAOF (the module's aof_rewrite in a fork) and
    // DEBUG LOADAOF at checkpoints.
    let primary =
        RedisServer::start_with(&["--repl-diskless-sync-delay", "0", "--appendonly", "yes"]);
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut p = connect(&primary);
    let mut r = connect(&replica);
    cachetx_tests::wait_until(Duration::from_secs(20), "replica link up", || {
        info_field(&mut r, "replication", "master_link_status").as_deref() == Some("up")
    });

    let started = Instant::now();
    let mut fuzz = Fuzz::new(seed);
    fuzz.flush_until = total - total / 4;
    fuzz.server_logs = vec![
        ("primary", primary.dir().join("redis.log")),
        ("replica", replica.dir().join("redis.log")),
    ];
    // The fuzz's own connections (RESP2 and RESP3 to the primary, RESP2 to the
    // replica); `p` and `r` serve the checks.
    let mut fuzz_p = RawConn::connect(&primary, false);
    let mut fuzz_p3 = RawConn::connect(&primary, true);
    let mut fuzz_r = RawConn::connect(&replica, false);
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut p)
        .expect("CONFIG SET maxmemory-policy");
    let mut checkpoints = 0;
    let mut batches = 0u64;
    while fuzz.sent < total {
        let batch = fuzz.batch();
        // Every fourth batch over RESP3 (maps, doubles, nulls of another shape).
        let conn = if batches % 4 == 3 {
            &mut fuzz_p3
        } else {
            &mut fuzz_p
        };
        batches += 1;
        fuzz.run_batch(conn, &mut fuzz_r, &batch);
        if fuzz.sent >= (checkpoints + 1) * CHECKPOINT_EVERY && fuzz.sent < total {
            checkpoints += 1;
            let reload = if checkpoints % 2 == 1 {
                Reload::Rdb
            } else {
                Reload::Aof
            };
            guarded_checkpoint(&mut fuzz, &primary, &replica, &mut p, &mut r, reload);
        }
    }

    // The fuzz's connections are still in step (no reply too many or too few),
    // both servers are up, and a fresh connection works too.
    for (name, conn) in [
        ("the primary's RESP2 connection", &mut fuzz_p),
        ("the primary's RESP3 connection", &mut fuzz_p3),
        ("the replica's connection", &mut fuzz_r),
    ] {
        let pong = conn.pipeline(&[vec![a(b"PING")]]);
        if !matches!(pong.as_deref(), Ok([Reply::Simple(p)]) if p == b"PONG") {
            fuzz.fail(&format!("PING on {name}: {pong:?}"));
        }
    }
    for (name, server) in [("primary", &primary), ("replica", &replica)] {
        let pong = ping(&mut connect(server));
        if pong.as_deref() != Ok("PONG") {
            fuzz.fail(&format!("the {name} does not answer PING: {pong:?}"));
        }
    }
    let primary_keys =
        guarded_checkpoint(&mut fuzz, &primary, &replica, &mut p, &mut r, Reload::No);
    let elapsed = started.elapsed();

    // The entry counts follow the data on both sides. (Entries dropped by a
    // FLUSHALL ASYNC leave the counts when the lazy-free thread frees them:
    // allow it a moment.)
    let mut entry_keys = 0u64;
    let mut typed = connect(&primary);
    for (db, key) in &primary_keys {
        let () = redis::cmd("SELECT")
            .arg(*db)
            .query(&mut typed)
            .expect("SELECT");
        let kind: String = redis::cmd("TYPE")
            .arg(key.as_slice())
            .query(&mut typed)
            .expect("TYPE");
        if kind == "nscache-e" {
            entry_keys += 1;
        }
    }
    let nonzero = |m: BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        m.into_iter().filter(|(_, n)| *n > 0).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ep, er) = (
            nonzero(entries_by_namespace(&mut p)),
            nonzero(entries_by_namespace(&mut r)),
        );
        let counted: u64 = ep.values().sum();
        if ep == er && counted == entry_keys {
            break;
        }
        if Instant::now() >= deadline {
            fuzz.fail(&format!(
                "the keyspace holds {entry_keys} nscache-e keys, but the namespaces count \
                 {counted} entries on the primary ({ep:?}) and {} on the replica ({er:?})",
                er.values().sum::<u64>()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // No panic was caught anywhere (a caught panic in a callback leaves no
    // error reply, only a log line).
    for (name, path) in &fuzz.server_logs {
        let log = std::fs::read(path).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panic")).collect();
        if !panics.is_empty() {
            fuzz.fail(&format!(
                "the {name}'s log reports panics:\n{}",
                panics.join("\n")
            ));
        }
    }
    // SPEC: NSCACHE.RESTOREENTRY is internal (AOF rewrites); a client must get
    // an error. Checked last, so that a digest mismatch is reported first.
    if let Some(first) = fuzz.internal_accepted.first() {
        fuzz.fail(&format!(
            "a client ran the internal NSCACHE.RESTOREENTRY {} times, e.g. {first}",
            fuzz.internal_accepted.len()
        ));
    }
    let tally: Vec<String> = fuzz
        .tally
        .iter()
        .map(|(name, (ok, err))| format!("{name} {ok}/{err}"))
        .collect();
    let used = info_field(&mut p, "memory", "used_memory_human").unwrap_or_default();
    let evicted = info_field(&mut p, "stats", "evicted_keys").unwrap_or_default();
    eprintln!(
        "nscache fuzz: seed {seed:#x}: {} commands in {elapsed:.2?}, {} keys at the end \
         (used_memory {used}, {evicted} evicted in all), digests equal\n  \
         replies (value/error): {}",
        fuzz.sent,
        primary_keys.len(),
        tally.join(", ")
    );
}
