//! `writ tenant create | list | show | disable` (docs/multi-tenant.md): the deployment's
//! tenants, managed by an admin of the default tenant.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix, print_table};
use crate::proto::admin as pb;
use clap::Args;

/// Flags of `writ tenant create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The tenant's name: 1-63 of [a-z0-9-], never reused.
    name: String,
    /// Its base trust domain: its identities live in investigate.BASE and remediate.BASE.
    #[arg(long = "trust-domain", value_name = "BASE")]
    base: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ tenant show` and `writ tenant disable`.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The tenant's name.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let tenant = client
        .create_tenant(pb::CreateTenantRequest {
            name: args.name,
            trust_domain: args.base,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .tenant
        .ok_or_else(|| anyhow::anyhow!("the server returned no tenant"))?;
    if args.admin.json {
        println!("{}", to_json(&tenant));
    } else {
        println!("created tenant {}", escape(&tenant.name));
        print_tenant(&tenant);
    }
    Ok(())
}

pub async fn list(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let tenants = client
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .tenants;
    if args.json {
        for tenant in &tenants {
            println!("{}", to_json(tenant));
        }
        return Ok(());
    }
    let rows: Vec<[String; 3]> = tenants
        .iter()
        .map(|t| [t.name.clone(), t.trust_domain.clone(), t.state.clone()])
        .collect();
    print_table(["NAME", "TRUST DOMAIN", "STATE"], &rows);
    Ok(())
}

pub async fn show(args: NameArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let tenant = client
        .get_tenant(pb::GetTenantRequest { name: args.name })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .tenant
        .ok_or_else(|| anyhow::anyhow!("the server returned no tenant"))?;
    if args.admin.json {
        println!("{}", to_json(&tenant));
    } else {
        print_tenant(&tenant);
    }
    Ok(())
}

pub async fn disable(args: NameArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let answer = client
        .disable_tenant(pb::DisableTenantRequest { name: args.name })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let tenant = answer
        .tenant
        .ok_or_else(|| anyhow::anyhow!("the server returned no tenant"))?;
    if args.admin.json {
        let mut json = to_json(&tenant);
        json["closed_incidents"] = serde_json::json!(answer.closed_incidents);
        println!("{json}");
    } else {
        println!(
            "disabled tenant {}: nothing is issued in it again; {} open incident(s) closed",
            escape(&tenant.name),
            answer.closed_incidents.len()
        );
    }
    Ok(())
}

fn to_json(tenant: &pb::Tenant) -> serde_json::Value {
    serde_json::json!({
        "name": tenant.name,
        "trust_domain": tenant.trust_domain,
        "state": tenant.state,
        "created_by": tenant.created_by,
        "created_at": tenant.created_at,
        "disabled_by": tenant.disabled_by,
        "disabled_at": tenant.disabled_at,
        "band_trust_domains": tenant.band_trust_domains,
    })
}

fn print_tenant(tenant: &pb::Tenant) {
    println!("name:          {}", escape(&tenant.name));
    println!("trust domain:  {}", escape(&tenant.trust_domain));
    println!("state:         {}", escape(&tenant.state));
    let bands: Vec<String> = tenant
        .band_trust_domains
        .iter()
        .map(|t| escape(t))
        .collect();
    println!("band domains:  {}", bands.join(", "));
    println!(
        "created:       {} by {}",
        format_unix(tenant.created_at),
        escape(&tenant.created_by)
    );
    if let (Some(at), Some(by)) = (tenant.disabled_at, &tenant.disabled_by) {
        println!("disabled:      {} by {}", format_unix(at), escape(by));
    }
}
