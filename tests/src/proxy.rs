//! A TCP proxy the test owns, to cut connections to a shared server without touching the server.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = broadcast::channel::<()>(4);
        let cut_tx = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut on_cut = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = on_cut.recv() => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// Drops every connection open through the proxy (new ones are accepted again).
    pub fn cut_all(&self) -> usize {
        self.cut.send(()).unwrap_or(0)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
