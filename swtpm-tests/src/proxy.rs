//! [`RecordingProxy`]: a TCP proxy between a TPM client and swtpm that records every byte,
//! both ways: what someone watching the TPM bus (a logic analyser on the LPC/SPI lines, a
//! compromised resource manager) sees.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{Swtpm, bind_port_pair, fail};

/// One proxied connection's bytes.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// The control port (swtpm's `--ctrl`), else the command port.
    pub control: bool,
    /// Client to TPM.
    pub to_tpm: Vec<u8>,
    /// TPM to client.
    pub from_tpm: Vec<u8>,
}

/// A TPM command as sent: its code and its bytes (header included).
#[derive(Clone, Debug)]
pub struct Command {
    /// `TPM_CC` (`0x176` is `TPM2_StartAuthSession`).
    pub code: u32,
    /// The whole command.
    pub bytes: Vec<u8>,
}

/// What a `TPM2_StartAuthSession` command asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStart {
    /// `tpmKey`: the salt key's handle, `TPM_RH_NULL` (0x40000007) for none.
    pub salt_key: u32,
    /// The size of `encryptedSalt` (0: unsalted).
    pub encrypted_salt_len: usize,
    /// `sessionType`: 0 HMAC, 1 policy, 3 trial.
    pub session_type: u8,
}

/// `TPM_CC_StartAuthSession`.
pub(crate) const START_AUTH_SESSION: u32 = 0x176;
/// `TPM_RH_NULL`.
pub const RH_NULL: u32 = 0x4000_0007;

type Record = Arc<Mutex<Vec<Exchange>>>;

/// Forwards a port pair to a swtpm's command and control ports, recording everything.
pub struct RecordingProxy {
    port: u16,
    record: Record,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RecordingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingProxy")
            .field("port", &self.port)
            .finish()
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, record: Record, index: usize, to_tpm: bool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = &buf[..n];
                if let Ok(mut r) = record.lock() {
                    if let Some(e) = r.get_mut(index) {
                        if to_tpm {
                            e.to_tpm.extend_from_slice(chunk);
                        } else {
                            e.from_tpm.extend_from_slice(chunk);
                        }
                    }
                }
                if to.write_all(chunk).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(
    listener: TcpListener,
    upstream: u16,
    control: bool,
    record: Record,
    stop: Arc<AtomicBool>,
) {
    for client in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(client) = client else {
            continue;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        let index = {
            let Ok(mut r) = record.lock() else {
                continue;
            };
            r.push(Exchange {
                control,
                ..Exchange::default()
            });
            r.len() - 1
        };
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (r1, r2) = (Arc::clone(&record), Arc::clone(&record));
        std::thread::spawn(move || copy(client, server, r1, index, true));
        std::thread::spawn(move || copy(server2, client2, r2, index, false));
    }
}

impl RecordingProxy {
    /// Starts recording in front of `tpm`.
    pub fn start(tpm: &Swtpm) -> Self {
        // Bound at once: a port chosen free and bound later can be taken in between by any
        // process on the machine (seen as "proxy port: Address already in use").
        let (command, control) = bind_port_pair();
        let port = command
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| fail("proxy port", e));
        let record: Record = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptors = [
            (command, tpm.port(), false),
            (control, tpm.port() + 1, true),
        ]
        .into_iter()
        .map(|(listener, upstream, control)| {
            let (record, stop) = (Arc::clone(&record), Arc::clone(&stop));
            std::thread::spawn(move || serve(listener, upstream, control, record, stop))
        })
        .collect();
        Self {
            port,
            record,
            stop,
            acceptors,
        }
    }

    /// The TCTI that reaches the TPM through the proxy.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Everything recorded so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Whether `needle` crossed the proxy, either way, in any connection.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.exchanges().iter().any(|e| {
            [&e.to_tpm, &e.from_tpm]
                .iter()
                .any(|stream| stream.windows(needle.len()).any(|w| w == needle))
        })
    }

    /// The TPM commands sent on the command port, in order.
    pub fn commands(&self) -> Vec<Command> {
        let mut out = Vec::new();
        for e in self.exchanges().iter().filter(|e| !e.control) {
            let mut rest = e.to_tpm.as_slice();
            while rest.len() >= 10 {
                let size = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
                let code = u32::from_be_bytes([rest[6], rest[7], rest[8], rest[9]]);
                if size < 10 || size > rest.len() {
                    break;
                }
                out.push(Command {
                    code,
                    bytes: rest[..size].to_vec(),
                });
                rest = &rest[size..];
            }
        }
        out
    }

    /// Every `TPM2_StartAuthSession` sent, decoded.
    pub fn session_starts(&self) -> Vec<SessionStart> {
        self.commands()
            .iter()
            .filter(|c| c.code == START_AUTH_SESSION)
            .filter_map(|c| decode_start(&c.bytes))
            .collect()
    }
}

/// Decodes `TPM2_StartAuthSession`: handles `tpmKey` and `bind`, then (after the
/// authorization area, if any) `nonceCaller`, `encryptedSalt` and `sessionType`.
fn decode_start(bytes: &[u8]) -> Option<SessionStart> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as usize);
    let u32_at = |i: usize| {
        Some(u32::from_be_bytes([
            *bytes.get(i)?,
            *bytes.get(i + 1)?,
            *bytes.get(i + 2)?,
            *bytes.get(i + 3)?,
        ]))
    };
    let tag = u16_at(0)?;
    let salt_key = u32_at(10)?;
    let mut i = 18;
    if tag == 0x8002 {
        i += 4 + u32_at(i)? as usize;
    }
    let nonce = u16_at(i)?;
    i += 2 + nonce;
    let salt = u16_at(i)?;
    i += 2 + salt;
    Some(SessionStart {
        salt_key,
        encrypted_salt_len: salt,
        session_type: *bytes.get(i)?,
    })
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptors so they see the flag.
        for port in [self.port, self.port + 1] {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}
