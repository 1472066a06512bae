//! The command line, as clap derives it. Every secret is read from a file (`-`: stdin), an
//! environment variable or a prompt; no option takes a secret value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hardkey_api::{KeyAlgorithm, SignatureScheme};

const EXIT_CODES: &str = "\
Keys are named by URI everywhere: pkcs11:token=web;object=tls, tpm2:handle=0x81000010,
tpm2:file=web.tss2.pem, file:key.pem, or an alias from the configuration file.

Secrets never go on the command line: each comes from its --*-file option (- reads stdin),
its environment variable (HARDKEY_PIN, HARDKEY_SO_PIN, HARDKEY_NEW_PIN, HARDKEY_KEY_AUTH,
HARDKEY_OWNER_AUTH, HARDKEY_ENDORSEMENT_AUTH, HARDKEY_LOCKOUT_AUTH, HARDKEY_NEW_AUTH,
HARDKEY_SEAL_AUTH), or a prompt when run on a terminal.

Exit status: 0 success; 1 the operation failed (device, authentication, key not found,
signature invalid); 2 usage error (bad option, URI, algorithm, subject or input file).";

/// hardkey: keys in TPMs and PKCS#11 tokens, for TLS servers and operators.
#[derive(Debug, Parser)]
#[command(name = "hardkey", version, about, after_long_help = EXIT_CODES, max_term_width = 100)]
pub(crate) struct Cli {
    /// Print one JSON document instead of text (for scripts).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Configuration file [default: $XDG_CONFIG_HOME/hardkey/config.toml].
    #[arg(long, global = true, value_name = "FILE", env = "HARDKEY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a key pair in a token, a TPM or a file.
    Keygen(KeygenArgs),
    /// List the keys of a token (pkcs11:token=...) or a TPM (tpm2:).
    List(StoreArgs),
    /// Show a key: URI, label, id, algorithm, schemes, public key fingerprint.
    Info(KeyArgs),
    /// Delete a key (destroy the token objects, evict the TPM handle, remove the file).
    Delete(DeleteArgs),
    /// Import a PKCS#8 private key into a token (it becomes non-extractable).
    Import(ImportArgs),
    /// Print a key's public key (SubjectPublicKeyInfo).
    Pubkey(PubkeyArgs),
    /// Sign a file with a key (the device does the private-key operation).
    Sign(SignArgs),
    /// Verify a signature in software against a public key.
    Verify(VerifyArgs),
    /// Make a PKCS#10 certificate signing request signed by the key.
    Csr(CsrArgs),
    /// Make a self-signed X.509 certificate for the key.
    Selfsign(SelfsignArgs),
    /// Certificate chains kept beside their keys: on the token (CKO_CERTIFICATE objects with
    /// the key's CKA_ID), or next to a key file (KEY.tss2.pem -> KEY.chain.pem).
    #[command(subcommand)]
    Cert(CertCommand),
    /// A small CA: issue certificates from requests with a device key.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Decrypt an RSA-OAEP ciphertext with a key (the device does the private-key operation).
    Decrypt(DecryptArgs),
    /// Encrypt a small message (a symmetric key) to an RSA key's public key, with RSA-OAEP.
    Encrypt(EncryptArgs),
    /// Seal a small secret (up to 128 bytes) to the TPM, under a password and/or PCR policy.
    Seal(SealArgs),
    /// Unseal data sealed with `hardkey seal`.
    Unseal(UnsealArgs),
    /// Prove a TPM key was made in the TPM and cannot leave it: TPM2_Certify evidence signed
    /// by an attestation key (hardkey tpm ak create); --verify checks such evidence.
    Attest(AttestArgs),
    /// TPM ownership and dictionary-attack protection.
    #[command(subcommand)]
    Tpm(TpmCommand),
    /// PKCS#11 tokens: list, inspect, initialize, set and change PINs.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure signatures per second and latency on a key.
    Bench(BenchArgs),
    /// Serve HTTPS on a key (BoringSSL or rustls), to try it with curl or openssl s_client.
    Serve(ServeArgs),
    /// Fetch an https:// URL with a device key as the TLS client certificate's key (as
    /// curl --cert does); the body goes to stdout or --out.
    Request(RequestArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Write the man pages (hardkey.1 and one per command) to a directory.
    #[command(hide = true)]
    Man(ManArgs),
}

/// Secrets a device may need to open a key; each also comes from its environment variable.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct DeviceSecrets {
    /// File with the PKCS#11 user PIN (- for stdin) [env: HARDKEY_PIN; else the URI's
    /// pin-source, else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) pin_file: Option<PathBuf>,
    /// File with the TPM key's auth value (- for stdin) [env: HARDKEY_KEY_AUTH; default
    /// empty]. For keygen: the new key's auth value.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_auth_file: Option<PathBuf>,
    /// File with the TPM owner auth (- for stdin) [env: HARDKEY_OWNER_AUTH; default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) owner_auth_file: Option<PathBuf>,
}

/// A key URI.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The key: pkcs11:...;object=LABEL, tpm2:handle=0x81..., tpm2:file=PATH, file:PATH, or an
    /// alias.
    #[arg(value_name = "URI")]
    pub(crate) uri: String,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// A store URI.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The token (pkcs11:token=LABEL) or TPM (tpm2: or tpm2:?tcti=...).
    #[arg(value_name = "URI")]
    pub(crate) uri: String,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where the key goes: pkcs11:token=T;object=LABEL, tpm2: (next free persistent handle,
    /// or the configured key-dir), tpm2:handle=0x81000010, tpm2:file=PATH, file:PATH.
    #[arg(value_name = "URI")]
    pub(crate) uri: String,
    /// Key algorithm: p256, p384, ed25519, ed448, rsa2048, rsa3072 or rsa4096 (ed25519 and
    /// ed448 on tokens with CKM_EDDSA; ed25519 also in a file; a TPM has no EdDSA).
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm, default_value = "p256")]
    pub(crate) alg: KeyAlgorithm,
    /// Label (PKCS#11 CKA_LABEL; TPM key file name in the key directory).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// TPM: make the key persistent at this handle (e.g. 0x81000010).
    #[arg(long, value_name = "HANDLE", conflicts_with = "out")]
    pub(crate) persist: Option<String>,
    /// TPM: write the key as a TSS2 PRIVATE KEY PEM file (never overwrites).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Signing only: RSA keys otherwise may also decrypt (RSA-OAEP).
    #[arg(long)]
    pub(crate) sign_only: bool,
    /// PKCS#11, RSA: also allow raw RSA (CKM_RSA_X_509) on the key. Only for a token that
    /// lacks a mechanism hardkey needs, so hardkey pads on the host: SoftHSM 2.6 has no
    /// RSA-OAEP with SHA-256. Raw RSA signing is decryption: anyone holding the PIN can then
    /// decrypt with the key, even a --sign-only one.
    #[arg(long)]
    pub(crate) allow_raw_rsa: bool,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The token: pkcs11:token=T;object=LABEL.
    #[arg(value_name = "URI")]
    pub(crate) uri: String,
    /// Unencrypted PKCS#8 private key, PEM or DER (convert others with
    /// `openssl pkcs8 -topk8 -nocrypt`).
    #[arg(long, value_name = "FILE")]
    pub(crate) from: PathBuf,
    /// Label [default: the URI's object, else a generated one].
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Signing only: RSA keys otherwise may also decrypt (RSA-OAEP).
    #[arg(long)]
    pub(crate) sign_only: bool,
    /// RSA: also allow raw RSA (CKM_RSA_X_509) on the token key, as for keygen.
    #[arg(long)]
    pub(crate) allow_raw_rsa: bool,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// Public key and certificate encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// PEM text.
    Pem,
    /// DER bytes.
    Der,
}

/// `pubkey`.
#[derive(Debug, Args)]
pub(crate) struct PubkeyArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Encoding.
    #[arg(long, value_enum, default_value_t = Format::Pem)]
    pub(crate) format: Format,
    /// Write to a file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Signature scheme [default: ecdsa for EC keys, rsa-pkcs1-sha256 for RSA keys, the key's own
    /// for EdDSA keys].
    #[arg(long, value_parser = parse_scheme)]
    pub(crate) scheme: Option<SignatureScheme>,
    /// The data to sign (- for stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// The input is already a digest of the scheme's hash (not for EdDSA, which signs the
    /// message itself).
    #[arg(long)]
    pub(crate) digest: bool,
    /// Where the signature goes (DER for ECDSA, raw for RSA: as `openssl dgst -sign`; R || S
    /// for EdDSA: as `openssl pkeyutl -sign -rawin`).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

/// `verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Public key file (PEM or DER SubjectPublicKeyInfo, as `hardkey pubkey` writes), or a
    /// certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) pubkey: PathBuf,
    /// Signature scheme [default: from the key type, as for sign].
    #[arg(long, value_parser = parse_scheme)]
    pub(crate) scheme: Option<SignatureScheme>,
    /// The signed data (- for stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// The signature.
    #[arg(long, value_name = "FILE")]
    pub(crate) sig: PathBuf,
}

/// Certificate contents shared by `csr` and `selfsign`.
#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Subject distinguished name, RFC 4514 style: "CN=web.example,O=Example,C=DE".
    #[arg(long)]
    pub(crate) subject: String,
    /// Subject alternative names: dns:NAME, ip:ADDRESS, email:ADDRESS, uri:URI
    /// (comma-separated or repeated).
    #[arg(long, value_name = "SAN")]
    pub(crate) san: Vec<String>,
    /// Signature scheme [default: from the key type].
    #[arg(long, value_parser = parse_scheme)]
    pub(crate) scheme: Option<SignatureScheme>,
    /// Output file (PEM) [default: stdout].
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `csr`.
#[derive(Debug, Args)]
pub(crate) struct CsrArgs {
    #[command(flatten)]
    pub(crate) name: NameArgs,
}

/// `selfsign`.
#[derive(Debug, Args)]
pub(crate) struct SelfsignArgs {
    #[command(flatten)]
    pub(crate) name: NameArgs,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
    /// Make a CA certificate (basicConstraints CA:TRUE, keyCertSign).
    #[arg(long)]
    pub(crate) ca: bool,
}

/// `cert ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Store a certificate chain (PEM or DER, the key's certificate first) beside its key.
    /// The first certificate must hold the key's public key.
    Import(CertImportArgs),
    /// Write the chain stored beside a key (or named by a pkcs11:...;type=cert URI).
    Export(CertExportArgs),
    /// List the certificates on a token (pkcs11:token=...), or the chain beside a key file.
    List(StoreArgs),
    /// Delete the chain beside a key: its certificate, and issuers no other certificate needs.
    Delete(CertDeleteArgs),
}

/// `cert import`.
#[derive(Debug, Args)]
pub(crate) struct CertImportArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// The chain file: PEM CERTIFICATE blocks or DER, the key's certificate first (- for
    /// stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) from: PathBuf,
    /// Replace a chain already stored beside the key.
    #[arg(long)]
    pub(crate) force: bool,
}

/// `cert export`.
#[derive(Debug, Args)]
pub(crate) struct CertExportArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Write to this file instead of stdout (an existing file only with --force).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Encoding: pem writes the whole chain, der the key's certificate only.
    #[arg(long, value_enum, default_value_t = Format::Pem)]
    pub(crate) format: Format,
    /// Replace an existing --out file.
    #[arg(long)]
    pub(crate) force: bool,
}

/// `cert delete`.
#[derive(Debug, Args)]
pub(crate) struct CertDeleteArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `ca ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Issue a certificate from a PKCS#10 request (openssl req -new, hardkey csr), signed by
    /// the CA key.
    ///
    /// The request's signature is verified first: a request its key did not sign is refused.
    /// The CA certificate must hold the CA key's public key and be a CA (basicConstraints
    /// CA:TRUE, keyCertSign). The certificate's issuer is the CA certificate's subject, its
    /// subject and public key the request's; its validity may not end after the CA
    /// certificate's (refused, never shortened).
    Sign(CaSignArgs),
}

/// The profile of an issued certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProfileArg {
    /// A TLS leaf: CA:FALSE, digitalSignature (+keyEncipherment for RSA), serverAuth and
    /// clientAuth.
    Leaf,
    /// An intermediate CA: CA:TRUE with --path-len, keyCertSign and cRLSign.
    Ca,
}

/// `ca sign`.
#[derive(Debug, Args)]
pub(crate) struct CaSignArgs {
    /// The CA's key: any key URI or alias.
    #[arg(long, value_name = "URI")]
    pub(crate) ca_key: String,
    /// The CA's certificate (PEM or DER; of a chain file, the first certificate).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_cert: PathBuf,
    /// The certificate signing request (PEM or DER; - for stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) csr: PathBuf,
    /// Where the certificate goes (PEM; never overwrites a file) [default: stdout].
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Validity in days; it must end before the CA certificate does.
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
    /// Subject alternative names instead of the request's: dns:NAME, ip:ADDRESS,
    /// email:ADDRESS, uri:URI (comma-separated or repeated).
    #[arg(long, value_name = "SAN")]
    pub(crate) san: Vec<String>,
    /// Copy the request's subject alternative names (the default when no --san is given).
    #[arg(long, conflicts_with = "san")]
    pub(crate) san_from_csr: bool,
    /// What to issue.
    #[arg(long, value_enum, default_value_t = ProfileArg::Leaf)]
    pub(crate) profile: ProfileArg,
    /// With --profile ca: how many CA certificates may follow the new one [default: 0, it
    /// issues only leaves].
    #[arg(long, value_name = "N")]
    pub(crate) path_len: Option<u8>,
    /// Serial number, hex (e.g. 01:a2:ff or 0x1a2f) [default: 159 random bits].
    #[arg(long, value_name = "HEX")]
    pub(crate) serial: Option<String>,
    /// Signature scheme of the CA key [default: from the key type].
    #[arg(long, value_parser = parse_scheme)]
    pub(crate) scheme: Option<SignatureScheme>,
    /// Issue even if --ca-cert is not marked as a CA (no basicConstraints CA:TRUE, or no
    /// keyCertSign): verifiers will reject what it signs.
    #[arg(long)]
    pub(crate) allow_non_ca_issuer: bool,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// The RSA encryption schemes of decrypt and encrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CryptSchemeArg {
    /// RSA-OAEP with SHA-256, MGF1-SHA-256 and an empty label.
    #[value(name = "oaep-sha256", alias = "rsa-oaep-sha256")]
    OaepSha256,
    /// RSA-OAEP with SHA-1 (openssl pkeyutl's default OAEP): not offered by hardkey's
    /// devices; refused with what to use instead.
    #[value(name = "oaep-sha1", alias = "rsa-oaep-sha1")]
    OaepSha1,
    /// RSAES-PKCS1-v1_5, legacy (a padding oracle): decrypt only, and only where the key's
    /// store allows it.
    #[value(name = "pkcs1", alias = "rsa-pkcs1v15-legacy")]
    Pkcs1,
}

/// `decrypt`.
#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    /// The RSA key: any key URI or alias.
    #[arg(long, value_name = "URI")]
    pub(crate) key: String,
    /// The ciphertext (exactly as long as the modulus; - for stdin).
    #[arg(value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Where the plaintext goes: a new file, created mode 0600 (never overwrites) [default:
    /// stdout, as openssl pkeyutl: mind terminals and pipes].
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Scheme.
    #[arg(long, value_enum, default_value_t = CryptSchemeArg::OaepSha256)]
    pub(crate) scheme: CryptSchemeArg,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `encrypt`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("recipient").required(true).args(["key", "pubkey"])))]
pub(crate) struct EncryptArgs {
    /// Encrypt to this key's public key (any key URI or alias).
    #[arg(long, value_name = "URI")]
    pub(crate) key: Option<String>,
    /// Encrypt to this public key (PEM or DER SubjectPublicKeyInfo, or a PEM certificate).
    #[arg(long, value_name = "FILE")]
    pub(crate) pubkey: Option<PathBuf>,
    /// The plaintext (- for stdin): at most the modulus length - 66 bytes with SHA-256.
    #[arg(value_name = "IN")]
    pub(crate) input: PathBuf,
    /// Where the ciphertext goes (never overwrites a file) [default: stdout].
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Scheme.
    #[arg(long, value_enum, default_value_t = CryptSchemeArg::OaepSha256)]
    pub(crate) scheme: CryptSchemeArg,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// The TPM to talk to.
#[derive(Debug, Args, Clone)]
pub(crate) struct TpmArgs {
    /// TCTI: device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321, mssim:..., tabrmd
    /// [default: the configuration's, else HARDKEY_TCTI, TPM2TOOLS_TCTI, device:/dev/tpmrm0].
    #[arg(long = "tpm", value_name = "TCTI")]
    pub(crate) tcti: Option<String>,
}

/// `seal`.
#[derive(Debug, Args)]
pub(crate) struct SealArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// The secret to seal (- for stdin), at most 128 bytes.
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// The sealed-data file to write (TSS2 PEM; never overwrites).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Bind to these PCRs' current values, e.g. sha256:0,7.
    #[arg(long, value_name = "BANK:PCRS")]
    pub(crate) pcrs: Option<String>,
    /// File with the sealing password (- for stdin) [env: HARDKEY_SEAL_AUTH; default: none].
    #[arg(long, value_name = "FILE")]
    pub(crate) auth_file: Option<PathBuf>,
    /// Seal with neither a password nor a PCR policy. Anyone who can reach this TPM (and,
    /// if the owner hierarchy has an auth value, knows it) can then unseal the file: the
    /// sealing protects the data only from other machines. Without this flag, seal needs
    /// --pcrs, a password, or both.
    #[arg(long)]
    pub(crate) no_policy: bool,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `unseal`.
#[derive(Debug, Args)]
pub(crate) struct UnsealArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// The sealed-data file.
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Where the secret goes (- for stdout; files are created mode 0600, never overwritten).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// File with the sealing password (- for stdin) [env: HARDKEY_SEAL_AUTH; asked on a
    /// terminal when the data has one].
    #[arg(long, value_name = "FILE")]
    pub(crate) auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `tpm ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TpmCommand {
    /// Which hierarchy auths are set, the dictionary-attack counter and parameters.
    Status(TpmArgs),
    /// Set the owner, endorsement and lockout auths of an unowned TPM.
    ///
    /// The three are set in that order. A run that was interrupted part-way (killed, power
    /// lost) can be run again with the same files: it checks the auths already set hold those
    /// values and sets the rest.
    TakeOwnership(TakeOwnershipArgs),
    /// Change one hierarchy's auth.
    ChangeAuth(ChangeAuthArgs),
    /// Clear the TPM with the lockout auth: every key under the owner hierarchy is lost.
    Clear(ClearArgs),
    /// Dictionary-attack lockout.
    #[command(subcommand)]
    Lockout(LockoutCommand),
    /// Flush every transient object and session in the TPM, whoever loaded them: what killed
    /// processes left on a TPM without a resource manager (tpm2_flushcontext -t -l -s).
    Flush(FlushArgs),
    /// Attestation keys (for hardkey attest).
    #[command(subcommand)]
    Ak(AkCommand),
}

/// `tpm ak ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AkCommand {
    /// Make an attestation key: a restricted signing key under the endorsement key made from
    /// the TCG EK template (the key an EK certificate in NV certifies), kept at a persistent
    /// handle (default 0x81010002) or in a TSS2 key file.
    Create(AkCreateArgs),
    /// Recover the secret of a credential a verifier made to this TPM's EK for the AK's name
    /// (tpm2_makecredential): TPM2_ActivateCredential, which succeeds only if the AK is in
    /// the same TPM as that EK.
    Activate(AkActivateArgs),
}

/// `tpm ak activate`.
#[derive(Debug, Args)]
pub(crate) struct AkActivateArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// The attestation key: tpm2:handle=0x81010002 (or the bare handle), tpm2:file=PATH (or
    /// the bare path).
    #[arg(long, value_name = "AK")]
    pub(crate) ak: String,
    /// The credential file (tpm2_makecredential -o).
    #[arg(long, value_name = "FILE")]
    pub(crate) credential: PathBuf,
    /// The algorithm of the EK the credential was made to: p256 or rsa2048.
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm, default_value = "p256")]
    pub(crate) ek_alg: KeyAlgorithm,
    /// Where the recovered secret goes (a new file, mode 0600; - for stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// File with the TPM endorsement auth (- for stdin) [env: HARDKEY_ENDORSEMENT_AUTH;
    /// default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) endorsement_auth_file: Option<PathBuf>,
}

/// `tpm ak create`.
#[derive(Debug, Args)]
pub(crate) struct AkCreateArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// Algorithm of the EK and the AK: p256 (ECDSA-SHA256) or rsa2048 (RSASSA-SHA256).
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm, default_value = "p256")]
    pub(crate) alg: KeyAlgorithm,
    /// Keep the AK at this persistent handle (needs the owner auth) [default: 0x81010002].
    #[arg(long, value_name = "HANDLE", conflicts_with = "out")]
    pub(crate) persist: Option<String>,
    /// Keep the AK in this new TSS2 key file instead (never overwrites).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Also write the AK's public key (PEM), for verifiers: hardkey attest --verify --ak-pub.
    #[arg(long, value_name = "FILE")]
    pub(crate) pub_out: Option<PathBuf>,
    /// File with the TPM endorsement auth (- for stdin) [env: HARDKEY_ENDORSEMENT_AUTH;
    /// default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) endorsement_auth_file: Option<PathBuf>,
    /// File with the TPM owner auth (- for stdin) [env: HARDKEY_OWNER_AUTH; default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) owner_auth_file: Option<PathBuf>,
}

/// `attest`.
#[derive(Debug, Args)]
pub(crate) struct AttestArgs {
    /// The key to attest: tpm2:handle=0x81..., tpm2:file=PATH or an alias.
    #[arg(value_name = "KEY", required_unless_present = "verify")]
    pub(crate) key: Option<String>,
    /// The attestation key: tpm2:handle=0x81010002 (or the bare handle), tpm2:file=PATH (or
    /// the bare path), as hardkey tpm ak create made it.
    #[arg(
        long,
        value_name = "AK",
        required_unless_present = "verify",
        conflicts_with = "verify"
    )]
    pub(crate) ak: Option<String>,
    /// Where the evidence goes (JSON; - for stdout).
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        required_unless_present = "verify",
        conflicts_with = "verify"
    )]
    pub(crate) out: Option<PathBuf>,
    /// Check evidence instead, in software (no TPM needed).
    #[arg(
        long,
        value_name = "EVIDENCE",
        conflicts_with = "key",
        requires = "key_pub"
    )]
    pub(crate) verify: Option<PathBuf>,
    /// With --verify: the public key the evidence must name (PEM or DER SubjectPublicKeyInfo,
    /// or a certificate).
    #[arg(long, value_name = "FILE", requires = "verify")]
    pub(crate) key_pub: Option<PathBuf>,
    /// With --verify: the AK you trust (its public key, as tpm ak create --pub-out wrote it).
    /// Without it the evidence's own AK is used, which proves little.
    #[arg(long, value_name = "FILE", requires = "verify")]
    pub(crate) ak_pub: Option<PathBuf>,
    /// The nonce (qualifying data) in hex, at most 64 bytes: put into the evidence, or
    /// expected in it with --verify.
    #[arg(long, value_name = "HEX", conflicts_with = "nonce_file")]
    pub(crate) nonce: Option<String>,
    /// The nonce as the raw bytes of a file (- for stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) nonce_file: Option<PathBuf>,
    /// TCTI [default: the key URI's, else the configuration's, else HARDKEY_TCTI,
    /// TPM2TOOLS_TCTI, device:/dev/tpmrm0].
    #[arg(long = "tpm", value_name = "TCTI")]
    pub(crate) tcti: Option<String>,
    /// File with the TPM endorsement auth (- for stdin) [env: HARDKEY_ENDORSEMENT_AUTH;
    /// default empty]; needed to load an AK kept in a file.
    #[arg(long, value_name = "FILE")]
    pub(crate) endorsement_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `tpm flush`.
#[derive(Debug, Args)]
pub(crate) struct FlushArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// Only transient objects (keys, primaries).
    #[arg(long, conflicts_with = "sessions")]
    pub(crate) objects: bool,
    /// Only sessions (loaded and saved).
    #[arg(long)]
    pub(crate) sessions: bool,
    /// Flush even with other processes using the TPM now (they lose their objects).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// New hierarchy auth files for take-ownership.
#[derive(Debug, Args)]
pub(crate) struct TakeOwnershipArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// File with the new owner auth (- for stdin) [env: HARDKEY_OWNER_AUTH].
    #[arg(long, value_name = "FILE")]
    pub(crate) owner_auth_file: Option<PathBuf>,
    /// File with the new endorsement auth [env: HARDKEY_ENDORSEMENT_AUTH].
    #[arg(long, value_name = "FILE")]
    pub(crate) endorsement_auth_file: Option<PathBuf>,
    /// File with the new lockout auth [env: HARDKEY_LOCKOUT_AUTH].
    #[arg(long, value_name = "FILE")]
    pub(crate) lockout_auth_file: Option<PathBuf>,
}

/// A TPM hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HierarchyArg {
    /// Owner (storage) hierarchy.
    Owner,
    /// Endorsement hierarchy.
    Endorsement,
    /// Lockout hierarchy.
    Lockout,
}

/// `tpm change-auth`.
#[derive(Debug, Args)]
pub(crate) struct ChangeAuthArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// Which hierarchy.
    #[arg(long, value_enum)]
    pub(crate) hierarchy: HierarchyArg,
    /// File with the current auth (- for stdin) [env: HARDKEY_OWNER_AUTH,
    /// HARDKEY_ENDORSEMENT_AUTH or HARDKEY_LOCKOUT_AUTH; default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) current_auth_file: Option<PathBuf>,
    /// File with the new auth [env: HARDKEY_NEW_AUTH; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) new_auth_file: Option<PathBuf>,
}

/// `tpm clear`.
#[derive(Debug, Args)]
pub(crate) struct ClearArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// File with the lockout auth (- for stdin) [env: HARDKEY_LOCKOUT_AUTH; default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) lockout_auth_file: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `tpm lockout ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LockoutCommand {
    /// Reset the failure counter and end a lockout.
    Reset(LockoutAuthArgs),
    /// Set the dictionary-attack parameters.
    Set(LockoutSetArgs),
}

/// The lockout auth.
#[derive(Debug, Args)]
pub(crate) struct LockoutAuthArgs {
    #[command(flatten)]
    pub(crate) tpm: TpmArgs,
    /// File with the lockout auth (- for stdin) [env: HARDKEY_LOCKOUT_AUTH; default empty].
    #[arg(long, value_name = "FILE")]
    pub(crate) lockout_auth_file: Option<PathBuf>,
}

/// `tpm lockout set`.
#[derive(Debug, Args)]
pub(crate) struct LockoutSetArgs {
    #[command(flatten)]
    pub(crate) auth: LockoutAuthArgs,
    /// Failures before lockout.
    #[arg(long)]
    pub(crate) max_tries: u32,
    /// One failure is forgotten after this long (0 disables protection), e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) recovery_time: Duration,
    /// Wait after a failed lockout-auth attempt, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) lockout_recovery: Duration,
}

/// The PKCS#11 module.
#[derive(Debug, Args, Clone)]
pub(crate) struct ModuleArgs {
    /// PKCS#11 module [default: the configuration's, else SoftHSM2].
    #[arg(long, value_name = "PATH")]
    pub(crate) module: Option<PathBuf>,
}

/// `token ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// List the tokens (with --slots: every slot, empty ones too).
    List(TokenListArgs),
    /// Show a token's state: PIN flags, sessions, PIN length.
    Info(TokenUriArgs),
    /// Initialize the token in a slot (sets its label and SO PIN).
    Init(TokenInitArgs),
    /// Set the user PIN with the SO PIN (also unlocks a locked user PIN).
    InitPin(TokenPinArgs),
    /// Change the user PIN (or with --so the SO PIN).
    ChangePin(ChangePinArgs),
}

/// `token list`.
#[derive(Debug, Args)]
pub(crate) struct TokenListArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// Show every slot.
    #[arg(long)]
    pub(crate) slots: bool,
}

/// A token URI.
#[derive(Debug, Args)]
pub(crate) struct TokenUriArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// The token: pkcs11:token=LABEL (or serial=...).
    #[arg(value_name = "URI")]
    pub(crate) uri: String,
}

/// `token init`.
#[derive(Debug, Args)]
pub(crate) struct TokenInitArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// The slot (see token list --slots).
    #[arg(long)]
    pub(crate) slot: u64,
    /// The token label (1-32 bytes).
    #[arg(long)]
    pub(crate) label: String,
    /// File with the new SO PIN (- for stdin) [env: HARDKEY_SO_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) so_pin_file: Option<PathBuf>,
    /// Initialize even if the slot holds an initialized token (destroys its keys).
    #[arg(long)]
    pub(crate) reinitialize: bool,
}

/// `token init-pin`.
#[derive(Debug, Args)]
pub(crate) struct TokenPinArgs {
    #[command(flatten)]
    pub(crate) token: TokenUriArgs,
    /// File with the SO PIN (- for stdin) [env: HARDKEY_SO_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) so_pin_file: Option<PathBuf>,
    /// File with the new user PIN [env: HARDKEY_NEW_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) new_pin_file: Option<PathBuf>,
}

/// `token change-pin`.
#[derive(Debug, Args)]
pub(crate) struct ChangePinArgs {
    #[command(flatten)]
    pub(crate) token: TokenUriArgs,
    /// Change the SO PIN instead of the user PIN.
    #[arg(long)]
    pub(crate) so: bool,
    /// File with the current user PIN (- for stdin) [env: HARDKEY_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) pin_file: Option<PathBuf>,
    /// File with the current SO PIN, with --so [env: HARDKEY_SO_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) so_pin_file: Option<PathBuf>,
    /// File with the new PIN [env: HARDKEY_NEW_PIN; else a prompt].
    #[arg(long, value_name = "FILE")]
    pub(crate) new_pin_file: Option<PathBuf>,
}

/// `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Signatures in flight at once (PKCS#11: sessions opened).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// How long to run, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Signature scheme [default: from the key type].
    #[arg(long, value_parser = parse_scheme)]
    pub(crate) scheme: Option<SignatureScheme>,
}

/// `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The key: any key URI or alias (with --cert).
    #[arg(long, value_name = "URI")]
    pub(crate) key: Option<String>,
    /// The certificate chain of --key: a PEM file (leaf first), or a pkcs11:...;type=cert
    /// URI (the chain on the token). Without --cert, the chain stored beside the key
    /// (hardkey cert import). The leaf must hold the key's public key.
    #[arg(long, value_name = "FILE|URI")]
    pub(crate) cert: Option<PathBuf>,
    /// A TOML file of several chains and their keys, chosen per handshake by the client's
    /// server name (SNI, from each leaf's DNS names) and signature schemes: `[[identity]]`
    /// entries with key = "URI", cert = "FILE" or "pkcs11:...;type=cert" (none: the chain
    /// stored beside the key) and optionally default = true; top-level
    /// unknown-names = "default" | "refuse".
    #[arg(long, value_name = "FILE")]
    pub(crate) identities: Option<PathBuf>,
    /// A directory of chain files (*.pem, *.crt), each naming its key on a line
    /// 'hardkey-key: URI' before its first -----BEGIN line.
    #[arg(long, value_name = "DIR")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// What a client sending no server name, or one no certificate covers, gets: default (the
    /// default identity, the first) or refuse (a failed handshake). Overrides the file's.
    #[arg(long, value_name = "POLICY", value_parser = ["default", "refuse"])]
    pub(crate) unknown_names: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(crate) listen: std::net::SocketAddr,
    /// TLS stack: boring (async private-key method) or rustls (signs on a blocking thread).
    #[arg(long, default_value = "boring")]
    pub(crate) stack: String,
    /// Event-loop threads (1: a single-threaded event loop).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub(crate) threads: usize,
    /// Most connections open at once; more are closed as soon as they are accepted. The cap
    /// is also kept below RLIMIT_NOFILE, leaving 64 descriptors (a quarter of a limit under
    /// 256) for the key's device.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// Deadline for a request head once its first byte arrived (HTTP/1.1; on HTTP/2 the
    /// 30 s idle timeout bounds it) and then for its body, and how long a write may wait for
    /// the client to read (e.g. 10s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) request_timeout: Duration,
    /// Add this delay to every private-key operation (e.g. 200ms, 5s), to see how the stack
    /// behaves with a slow device.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) simulate_latency: Option<Duration>,
    /// How often to look for changed certificate, key and configuration files (their
    /// metadata, following symbolic links); a change is reloaded without a restart, as SIGHUP
    /// does. 0 turns the polling off (SIGHUP still reloads).
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) watch_interval: Duration,
    /// Require every client to present a certificate issued by a CA in this PEM file
    /// (mutual TLS); clients without one, or with one that does not verify, fail their
    /// handshake (counted, and logged with the reason).
    #[arg(long, value_name = "FILE")]
    pub(crate) client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (text format, any path) on this address, e.g.
    /// 127.0.0.1:9464: handshakes, failures, event-loop stalls, certificate expiry, and per
    /// device and scheme the key operations' times, queue and failures. The labels name the
    /// devices (token labels, TPM TCTIs) and certificates: keep it on a loopback or private
    /// address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The URL to GET: `https://HOST[:PORT][/PATH]`.
    #[arg(value_name = "URL")]
    pub(crate) url: String,
    /// The client certificate's key: any key URI or alias (with --cert).
    #[arg(long, value_name = "URI", requires = "cert")]
    pub(crate) key: Option<String>,
    /// The client certificate chain (PEM, the client's certificate first); it must hold
    /// the public key of --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The CAs to verify the server against (PEM) [default: the system's CA bundle].
    #[arg(long, value_name = "FILE")]
    pub(crate) cacert: Option<PathBuf>,
    /// TLS stack: boring (async private-key method) or rustls (signs on a blocking thread).
    #[arg(long, default_value = "boring")]
    pub(crate) stack: String,
    /// Where the body goes (- for stdout; a file is replaced only once the whole body
    /// arrived).
    #[arg(long, short = 'o', value_name = "FILE", default_value = "-")]
    pub(crate) out: PathBuf,
    /// Longest the whole request may take (connect, handshake, response), e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) max_time: Duration,
    #[command(flatten)]
    pub(crate) secrets: DeviceSecrets,
}

/// `completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// `man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Directory to write the pages to.
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: PathBuf,
}

/// A count that is not at least 1.
#[derive(Debug, thiserror::Error)]
enum CountError {
    #[error("must be at least 1")]
    Zero,
    #[error("not a count: {0}")]
    NotANumber(#[from] std::num::ParseIntError),
}

/// A count that must be at least 1 (`--threads 0` is refused, not quietly raised).
fn at_least_one(s: &str) -> Result<usize, CountError> {
    match s.parse::<usize>()? {
        0 => Err(CountError::Zero),
        n => Ok(n),
    }
}

fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, hardkey_api::Error> {
    s.parse()
}

fn parse_scheme(s: &str) -> Result<SignatureScheme, hardkey_api::Error> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_keygen() {
        let cli = Cli::try_parse_from([
            "hardkey",
            "keygen",
            "tpm2:",
            "--alg",
            "rsa3072",
            "--persist",
            "0x81000010",
        ])
        .unwrap();
        let Command::Keygen(k) = cli.command else {
            panic!("not keygen")
        };
        assert_eq!(k.alg, KeyAlgorithm::Rsa3072);
        assert!(
            Cli::try_parse_from(["hardkey", "keygen", "tpm2:", "--alg", "x25519"])
                .unwrap_err()
                .to_string()
                .contains("p256, p384, ed25519, ed448")
        );
    }
}
