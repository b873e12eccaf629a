//! Owns serving: the mTLS TCP listener that other nodes reach (TLS handshakes done concurrently,
//! certificates hot-swapped through the resolver), the router with the authorization layer, and
//! [`Serving`], the one seam that starts a manager's port with its background work.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_pki::ReloadableCert;
use shoal_proto::ca_server::CaServer;
use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::node_ca_server::NodeCaServer;
use shoal_proto::raft_server::RaftServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::authz::{AuthzLayer, Transport};
use crate::{Manager, ManagerError};

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes that may wait for the server at once.
const ACCEPT_BACKLOG: usize = 1024;

impl Manager {
    /// Serves the cluster port on `listener` with mTLS until `shutdown` resolves. `cert` is this
    /// node's certificate; replacing it there takes effect at the next handshake.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        cert: Arc<ReloadableCert>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ManagerError> {
        // Revocation is enforced on every call by the authorization layer, which tells a removed
        // node plainly that its certificate is revoked (see `server_config`).
        let config = shoal_pki::tls::server_config(self.roots(), cert, None)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let _accept = AbortOnDrop(tokio::spawn(accept_loop(listener, acceptor, tx)));
        let transport = Transport::Tls {
            cluster_id: self.cluster_id().to_string(),
            revocations: self.revocations(),
            roles: self.shared.roles.clone(),
            roots: self.roots(),
        };
        let result = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(AuthzLayer::new(transport))
            .add_service(CaServer::new(self.ca()))
            .add_service(NodeCaServer::new(self.ca()))
            .add_service(DispatcherServer::new(self.dispatcher()))
            .add_service(ControlServer::new(self.control()))
            .add_service(
                RaftServer::new(self.raft_api())
                    .max_decoding_message_size(2 * crate::raft::transport::CHUNK),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
            .await;
        Ok(result?)
    }
}

/// A manager serving its cluster port, with the work that runs beside it (the heartbeat monitor,
/// node updates to sessions, the orchestrator). Dropping it stops everything at once;
/// [`Serving::shutdown`] lets in-flight calls finish first.
#[derive(Debug)]
pub struct Serving {
    manager: Manager,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Manager {
    /// Serves the cluster port on `listener` presenting `cert` (see [`Manager::serve_tls`]) and
    /// starts the monitor, node updates and orchestrator.
    pub fn serve(&self, listener: TcpListener, cert: Arc<ReloadableCert>) -> Serving {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let m = self.clone();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = m.serve_tls(listener, cert, shutdown).await {
                tracing::error!(error = %e, "cluster port stopped");
            }
        });
        let background =
            vec![self.spawn_monitor(), self.spawn_node_updates(), self.spawn_orchestrator()];
        Serving { manager: self.clone(), stop: Some(stop), server, background }
    }
}

impl Serving {
    /// The manager being served.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Stops serving: no new connections, sessions closed, in-flight calls given up to 3 s.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.manager.stop();
        for task in &self.background {
            task.abort();
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.server).await.is_err() {
            tracing::warn!("cluster port did not drain in 3s; closing it");
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in &self.background {
            task.abort();
        }
        self.server.abort();
        self.manager.stop();
    }
}

/// A task that ends with its owner (the accept loop, which frees the port however serving
/// ends; a call in flight; a watcher beside a server).
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Accepted = Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>;

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<Accepted>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
