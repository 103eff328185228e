//! `drmesh ca`: make the mesh's certificate authority and issue certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use drmesh_protocol::pki::{self, CertFiles, Validity};
use drmesh_protocol::{AgentId, RegionId};

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create a new CA (ca.pem, ca.key) in --dir.
    Init {
        #[arg(long, env = "DRMESH_CA_DIR", default_value = ".")]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "drmesh CA")]
        name: String,
    },
    /// Issue a certificate signed by the CA in --dir.
    #[command(subcommand)]
    Issue(IssueCmd),
}

#[derive(clap::Args)]
pub struct IssueOpts {
    /// The CA directory.
    #[arg(long, env = "DRMESH_CA_DIR", default_value = ".")]
    dir: PathBuf,
    /// Where to write the certificate and key (default: the CA directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// Explicit end of validity (RFC 3339); overrides --days. A past date makes an
    /// expired certificate, which is useful to test that it is refused.
    #[arg(long)]
    not_after: Option<String>,
}

impl IssueOpts {
    fn validity(&self) -> anyhow::Result<Validity> {
        let mut v = Validity::days(self.days);
        if let Some(s) = &self.not_after {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--not-after {s:?} is not an RFC 3339 time"))?;
            v.not_after = t;
            if v.not_before >= t {
                v.not_before = t - time::Duration::days(1);
            }
        }
        Ok(v)
    }

    fn out_dir(&self) -> &Path {
        self.out.as_deref().unwrap_or(&self.dir)
    }
}

#[derive(Subcommand)]
pub enum IssueCmd {
    /// An agent's client certificate; the id and region are written into it.
    Agent {
        #[arg(long)]
        id: AgentId,
        #[arg(long)]
        region: RegionId,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// The coordinator's server certificate for one or more host names or addresses.
    Coordinator {
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        opts: IssueOpts,
    },
}

fn print_files(what: &str, files: &CertFiles) {
    println!("{what}: {}", files.cert.display());
    println!("key:  {}", files.key.display());
}

pub fn run(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, name } => {
            let files = pki::init_ca(&dir, &name)?;
            print_files("CA certificate", &files);
        }
        CaCmd::Issue(IssueCmd::Agent { id, region, opts }) => {
            let files = pki::agent_files(opts.out_dir(), &id);
            pki::issue_agent(&opts.dir, &id, &region, opts.validity()?, &files)?;
            print_files("agent certificate", &files);
        }
        CaCmd::Issue(IssueCmd::Coordinator { hosts, opts }) => {
            let files = pki::coordinator_files(opts.out_dir());
            pki::issue_coordinator(&opts.dir, &hosts, opts.validity()?, &files)?;
            print_files("coordinator certificate", &files);
        }
    }
    Ok(())
}
