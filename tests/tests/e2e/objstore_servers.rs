//! The S3 (moto_server), Azure Blob (azurite-blob) and GCS (fake-gcs-server) test servers
//! start, and buckets and containers can be created on them.

use drmesh_tests::http;
use drmesh_tests::objstore::{AzuriteServer, GcsServer, S3Server};

#[test]
fn s3_and_azurite_servers_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path());
    let azurite = AzuriteServer::start(dir.path());

    s3.create_bucket("drmesh-test");
    let listing = http("GET", &format!("{}/drmesh-test", s3.endpoint), None, None);
    assert_eq!(
        listing.status,
        200,
        "GET bucket: {}\n{}",
        listing.text,
        s3.proc.log_text()
    );
    assert!(
        listing.text.contains("<Name>drmesh-test</Name>"),
        "{}",
        listing.text
    );

    // Signed request: proves the SharedKey signing matches Azurite's.
    azurite.create_container("drmesh-test");

    let gcs = GcsServer::start(dir.path());
    gcs.create_bucket("drmesh-test");
    assert!(gcs.objects("drmesh-test", "").is_empty());
}
