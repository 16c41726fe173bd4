//! The `writ` command line: one file per command group; this file only parses and
//! dispatches. Every admin command reaches the server over the admin socket.

mod audit;
mod authority;
mod backup;
mod bundle;
mod client;
mod dev;
mod grant;
mod healthcheck;
mod incident;
mod mint;
mod operator;
mod output;
mod playbook;
mod profile;
mod replica;
mod svid;
mod tenant;
mod token;

pub use output::escape;

/// An error that ends `writ` with its own exit status instead of 1 (`audit verify`
/// exits 2 when it could not verify, as `cmp` and `diff` do for trouble).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process exit status.
    pub code: u8,
    /// The one-line error.
    pub message: String,
}

use crate::ttl::Ttl;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use writ_verifier::Band;

/// writ: SPIFFE workload identities for AI SRE agents.
#[derive(Debug, Parser)]
#[command(name = "writ", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    logs: LogArgs,
    #[command(subcommand)]
    command: Command,
}

/// How the process logs (stderr); the command line beats a config file's `log_format`
/// and `log_level` (docs/configuration.md, "Logs").
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: text, or json (one object per line).
    #[arg(long, global = true, env = "WRIT_LOG_FORMAT", value_enum)]
    log_format: Option<crate::logging::LogFormat>,
    /// Log levels, per module: a filter such as `info,writ::agent=debug`
    /// [default: warn,writ=info].
    #[arg(long, global = true, env = "WRIT_LOG")]
    log_level: Option<String>,
}

impl LogArgs {
    /// Installs the log subscriber, from these flags and (the long-running processes)
    /// their config file's `log_format` and `log_level`.
    fn install(
        &self,
        file_format: Option<crate::logging::LogFormat>,
        file_level: Option<&str>,
    ) -> anyhow::Result<crate::logging::LogFormat> {
        let settings = crate::logging::LogSettings::choose(
            self.log_format,
            self.log_level.as_deref(),
            file_format,
            file_level,
        )?;
        let format = settings.format;
        settings.install()?;
        Ok(format)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the issuer with embedded storage and a local admin socket.
    Dev(dev::DevArgs),
    /// Run the issuer alone, serving remote agents over the node API.
    Server(dev::ServerArgs),
    /// Run an agent: attest to a server, serve the Workload API on this host.
    Agent(dev::AgentArgs),
    /// CA authorities: show, and rotate by hand (prepare, then activate).
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Signing replicas: admit one's intermediate keys on the server holding the roots.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Operators: who may use the admin socket.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Tenants: one deployment, several organisations, each with its own trust domains,
    /// operators, incidents and audit trail (docs/multi-tenant.md).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Join tokens for agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// X.509-SVIDs.
    #[command(subcommand)]
    X509(X509Command),
    /// JWT-SVIDs.
    #[command(subcommand)]
    Jwt(JwtCommand),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Profiles: which attested workloads are which agent or service.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Incidents: what agents work on, for how long, with which scopes.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Remediation grants: a plan, approved by a quorum of named humans, active for a
    /// bounded window.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Guardrail playbooks: pre-approved containment actions, activated by one incident
    /// commander for at most 10 minutes.
    #[command(subcommand)]
    Playbook(playbook::PlaybookCommand),
    /// Issued X.509-SVIDs: list them, revoke one by serial.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// The tamper-evident audit log: read it, checkpoint it, prove it intact.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// grpc.health.v1 of the server (or, with --socket, an agent): exit 0 when SERVING,
    /// 1 when not or when nothing answers.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Back up the server's store, audit log and keys into one encrypted file (admins,
    /// on the server's host).
    Backup(backup::BackupArgs),
    /// Restore a backup into an absent or empty data directory, with no server running.
    Restore(backup::RestoreArgs),
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant with its own base trust domain and band CAs.
    Create(tenant::CreateArgs),
    /// List every tenant, the default one first.
    List(AdminArgs),
    /// Show one tenant.
    Show(tenant::NameArgs),
    /// Disable a tenant for good: its open incidents close, nothing is issued in it again.
    Disable(tenant::NameArgs),
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Create a profile.
    Create(profile::CreateArgs),
    /// List every profile.
    List(AdminArgs),
    /// Show one profile.
    Show(profile::NameArgs),
    /// Delete a profile; its workloads lose their identities at once.
    Delete(profile::NameArgs),
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// Open an incident: its assigned agents receive identities for it.
    Open(incident::OpenArgs),
    /// Close an incident for good: no identity for it is issued any more.
    Close(incident::IdArgs),
    /// Extend an open incident's maximum lifetime.
    Extend(incident::ExtendArgs),
    /// List every incident, open and closed.
    List(AdminArgs),
    /// Show one incident.
    Show(incident::IdArgs),
    /// The incident's decision chain from the audit log: evidence, plan, approvals,
    /// identities, actions, close.
    Timeline(incident::IdArgs),
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// Ask for remediation authority with a plan; prints the grant id.
    Request(grant::RequestArgs),
    /// Approve a grant's plan (its SHA-256). Without --digest, the fetched plan's digest
    /// is sent and, once accepted, what you approved is echoed to stderr.
    Approve(grant::ApproveArgs),
    /// Refuse a pending grant.
    Deny(grant::EndArgs),
    /// List grants, of every incident or of one.
    List(grant::ListArgs),
    /// Show one grant with its evidence and plan in full: what approvers sign.
    Show(grant::ShowArgs),
    /// End a pending or active grant now.
    Revoke(grant::EndArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// The latest records; with -f, follow new ones.
    Tail(audit::TailArgs),
    /// Print the log's latest signed checkpoint (keep it elsewhere; verify --since it).
    Checkpoint(AdminArgs),
    /// Recompute the tree and check the signed checkpoint (and a kept one): names the
    /// first bad index.
    Verify(audit::VerifyArgs),
    /// Every record as JSON lines, of the whole log or of one incident.
    Export(audit::ExportArgs),
}

#[derive(Debug, Subcommand)]
enum SvidCommand {
    /// List live X.509-SVIDs, of every incident or of one, revoked or not.
    List(svid::ListArgs),
    /// Revoke one X.509-SVID by serial: its holder is issued a fresh one, and verifiers
    /// are told to refuse it until it expires.
    Revoke(svid::RevokeArgs),
}

#[derive(Debug, Subcommand)]
enum AuthorityCommand {
    /// List each band's authorities and their states.
    Show(authority::Args),
    /// Prepare the next authority now: published in bundles, not yet signing.
    Prepare(authority::Args),
    /// Activate the prepared authority now; the current one retires.
    Activate(authority::Args),
    /// A CA key may be compromised: the authority never signs again, a new one takes over
    /// at once, agents re-issue what it signed and writ's verifiers refuse it. It stays in
    /// bundles until revoked.
    Taint(authority::ChangeArgs),
    /// Remove a tainted authority from every bundle and delete its keys.
    Revoke(authority::RevokeArgs),
}

#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Admit a replica's intermediate keys (by SHA-256): the roots then certify them.
    Admit(replica::AdmitArgs),
    /// Withdraw admitted keys: their intermediates are not renewed and stop signing when
    /// they expire.
    Remove(replica::RemoveArgs),
    /// Every replica key that asked for an intermediate: its replica, band, state, and
    /// (on the server holding the roots) whether it is admitted.
    List(AdminArgs),
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Every operator, with uid and roles.
    List(AdminArgs),
    /// One operator.
    Show(operator::ShowArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a single-use join token (printed once; only its hash is stored).
    Create(token::CreateArgs),
}

#[derive(Debug, Subcommand)]
enum X509Command {
    /// Mint an X.509-SVID: the key is generated here and never sent; the server signs a CSR.
    Mint(mint::X509MintArgs),
}

#[derive(Debug, Subcommand)]
enum JwtCommand {
    /// Mint a JWT-SVID and print it.
    Mint(mint::JwtMintArgs),
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Print the trust bundle of one band, or of all.
    Show(bundle::ShowArgs),
}

/// How to reach the server, and how to print.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin socket.
    #[arg(
        long,
        env = "WRIT_ADMIN_SOCKET",
        default_value = "./writ-data/admin.sock"
    )]
    admin_socket: PathBuf,
    /// A remote server's admin API, `https://HOST:PORT`, over mTLS with an operator
    /// certificate (instead of the local socket).
    #[arg(long, env = "WRIT_SERVER")]
    server: Option<String>,
    /// Operator certificate (PEM) for --server.
    #[arg(long, env = "WRIT_OPERATOR_CERT", requires = "server")]
    cert: Option<PathBuf>,
    /// Operator private key (PEM PKCS#8) for --server.
    #[arg(long, env = "WRIT_OPERATOR_KEY", requires = "server")]
    key: Option<PathBuf>,
    /// The server's base trust bundle (PEM, `writ bundle show --band base`) for --server.
    #[arg(long, env = "WRIT_SERVER_BUNDLE", requires = "server")]
    server_bundle: Option<PathBuf>,
    /// The server's base trust domain, for --server.
    #[arg(
        long = "server-trust-domain",
        env = "WRIT_TRUST_DOMAIN",
        default_value = "example.org"
    )]
    trust_domain: String,
    /// The tenant to act in (docs/multi-tenant.md); none is the default tenant.
    #[arg(long, env = "WRIT_TENANT")]
    tenant: Option<String>,
    /// Print JSON (one object, or one per line for lists).
    #[arg(long)]
    json: bool,
}

/// Who an SVID is for.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Band: investigative, remediation or base.
    #[arg(long, value_parser = parse_band)]
    band: Option<Band>,
    /// A SPIFFE ID some profile holds now (an agent's, a grant's, a service's): writ mints
    /// nothing policy does not give a workload.
    #[arg(long, conflicts_with_all = ["agent", "incident", "grant"], required_unless_present = "agent")]
    spiffe_id: Option<String>,
    /// Agent name (with --incident): writ derives the SPIFFE ID and claims.
    #[arg(long, requires = "incident")]
    agent: Option<String>,
    /// Incident id.
    #[arg(long, requires = "agent")]
    incident: Option<String>,
    /// Grant id (remediation band).
    #[arg(long, requires = "agent")]
    grant: Option<String>,
    /// Only this of the scopes policy gives the identity (repeatable; default: all).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Lifetime, e.g. 90s or 5m (default: the server's).
    #[arg(long)]
    ttl: Option<Ttl>,
}

fn parse_band(s: &str) -> Result<Band, String> {
    s.parse()
        .map_err(|e: writ_verifier::ClaimsError| e.to_string())
}

impl IdentityArgs {
    fn to_proto(&self) -> crate::proto::admin::Identity {
        crate::proto::admin::Identity {
            band: self.band.map(|b| b.to_string()).unwrap_or_default(),
            spiffe_id: self.spiffe_id.clone().unwrap_or_default(),
            agent: self.agent.clone().unwrap_or_default(),
            incident: self.incident.clone().unwrap_or_default(),
            grant: self.grant.clone().unwrap_or_default(),
            scopes: self.scopes.clone(),
        }
    }
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        // The long-running processes read their config file first: it may set the logs.
        let long_running = matches!(
            self.command,
            Command::Dev(_) | Command::Server(_) | Command::Agent(_)
        );
        if !long_running {
            self.logs.install(None, None)?;
        }
        let logs = self.logs;
        match self.command {
            Command::Dev(args) => dev::run(args, logs).await,
            Command::Server(args) => dev::server(args, logs).await,
            Command::Agent(args) => dev::agent(args, logs).await,
            Command::Token(TokenCommand::Create(args)) => token::create(args).await,
            Command::Operator(OperatorCommand::List(args)) => operator::list(args, None).await,
            Command::Operator(OperatorCommand::Show(args)) => {
                operator::list(args.admin, Some(args.name)).await
            }
            Command::Replica(ReplicaCommand::Admit(args)) => replica::admit(args).await,
            Command::Replica(ReplicaCommand::Remove(args)) => replica::remove(args).await,
            Command::Replica(ReplicaCommand::List(args)) => replica::list(args).await,
            Command::Authority(AuthorityCommand::Show(args)) => {
                authority::run(args, authority::Action::Show).await
            }
            Command::Authority(AuthorityCommand::Prepare(args)) => {
                authority::run(args, authority::Action::Prepare).await
            }
            Command::Authority(AuthorityCommand::Taint(args)) => authority::taint(args).await,
            Command::Authority(AuthorityCommand::Revoke(args)) => authority::revoke(args).await,
            Command::Authority(AuthorityCommand::Activate(args)) => {
                authority::run(args, authority::Action::Activate).await
            }
            Command::X509(X509Command::Mint(args)) => mint::x509(args).await,
            Command::Jwt(JwtCommand::Mint(args)) => mint::jwt(args).await,
            Command::Bundle(BundleCommand::Show(args)) => bundle::show(args).await,
            Command::Tenant(TenantCommand::Create(args)) => tenant::create(args).await,
            Command::Tenant(TenantCommand::List(args)) => tenant::list(args).await,
            Command::Tenant(TenantCommand::Show(args)) => tenant::show(args).await,
            Command::Tenant(TenantCommand::Disable(args)) => tenant::disable(args).await,
            Command::Profile(ProfileCommand::Create(args)) => profile::create(args).await,
            Command::Profile(ProfileCommand::List(args)) => profile::list(args).await,
            Command::Profile(ProfileCommand::Show(args)) => profile::show(args).await,
            Command::Profile(ProfileCommand::Delete(args)) => profile::delete(args).await,
            Command::Incident(IncidentCommand::Open(args)) => incident::open(args).await,
            Command::Incident(IncidentCommand::Close(args)) => incident::close(args).await,
            Command::Incident(IncidentCommand::Extend(args)) => incident::extend(args).await,
            Command::Incident(IncidentCommand::List(args)) => incident::list(args).await,
            Command::Incident(IncidentCommand::Show(args)) => incident::show(args).await,
            Command::Incident(IncidentCommand::Timeline(args)) => {
                audit::timeline(args.id, args.admin).await
            }
            Command::Audit(AuditCommand::Tail(args)) => audit::tail(args).await,
            Command::Audit(AuditCommand::Checkpoint(args)) => audit::checkpoint(args).await,
            Command::Audit(AuditCommand::Verify(args)) => audit::verify_cmd(args).await,
            Command::Audit(AuditCommand::Export(args)) => audit::export(args).await,
            Command::Grant(GrantCommand::Request(args)) => grant::request(args).await,
            Command::Grant(GrantCommand::Approve(args)) => grant::approve(args).await,
            Command::Grant(GrantCommand::Deny(args)) => grant::deny(args).await,
            Command::Grant(GrantCommand::List(args)) => grant::list(args).await,
            Command::Grant(GrantCommand::Show(args)) => grant::show(args).await,
            Command::Grant(GrantCommand::Revoke(args)) => grant::revoke(args).await,
            Command::Playbook(command) => playbook::run(command).await,
            Command::Svid(SvidCommand::List(args)) => svid::list(args).await,
            Command::Svid(SvidCommand::Revoke(args)) => svid::revoke(args).await,
            Command::Healthcheck(args) => healthcheck::run(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
        }
    }
}
