//! The `service` example, driven over loopback with real HTTP/1.1 requests
//! from a hand-written client.

#[path = "../examples/service.rs"]
#[allow(dead_code)]
mod service;

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{hex, leaf};
use ringtree::{Blake3, Config, FlushPolicy, Hash, LeanImt, Proof};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The root of a tree of `leaves`, in memory.
fn root_of(leaves: &[Hash]) -> Hash {
    let mut t = LeanImt::<Blake3, 4, 32>::new(Blake3);
    t.insert_many(leaves).unwrap()
}

/// One request on a fresh connection: the status and the JSON body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap_or_else(|e| {
        panic!("{method} {path}: the server closed before reading the request: {e}")
    });
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts.next().unwrap().parse().expect("status code");
    let length: usize = lines
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(body.len(), length, "body length for {method} {path}");
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{method} {path}: body {body:?} is not JSON: {e}"));
    (status, json)
}

async fn post(addr: SocketAddr, body: &Value) -> (u16, Value) {
    request(addr, "POST", "/leaves", &body.to_string()).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "GET", path, "").await
}

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: JoinHandle<std::io::Result<()>>,
}

async fn start(tree: service::Tree) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(service::serve(listener, tree, async {
        let _ = stopped.await;
    }));
    Server { addr, stop, done }
}

impl Server {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .expect("serve and close succeed");
    }
}

/// `{"index", "count", "root"}` of a successful POST.
fn ack((status, body): (u16, Value)) -> (u64, u64, String) {
    assert_eq!(status, 200, "POST failed: {body}");
    (
        body["index"].as_u64().unwrap(),
        body["count"].as_u64().unwrap(),
        body["root"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let tree = service::Tree::open(Config::new(dir.path())).await.unwrap();
    let server = start(tree.clone()).await;
    let addr = server.addr;

    // An empty tree has no root.
    assert_eq!(
        get(addr, "/root").await,
        (200, json!({"size": 0, "root": null}))
    );

    // One leaf: index 0, and the root of a one-leaf tree is the leaf.
    let mut all = vec![leaf(0)];
    let (index, count, root) = ack(post(addr, &json!({"leaf": hex(&leaf(0))})).await);
    assert_eq!((index, count), (0, 1));
    assert_eq!(root, hex(&root_of(&all)));
    assert_eq!(root, hex(&leaf(0)));

    // Many: the first index and the count.
    let batch: Vec<Hash> = (1..11).map(leaf).collect();
    let body = json!({"leaves": batch.iter().map(|l| hex(l)).collect::<Vec<_>>()});
    all.extend(&batch);
    assert_eq!(ack(post(addr, &body).await), (1, 10, hex(&root_of(&all))));

    // Uppercase hex is a leaf too.
    all.push(leaf(11));
    let body = json!({"leaf": hex(&leaf(11)).to_uppercase()});
    assert_eq!(ack(post(addr, &body).await), (11, 1, hex(&root_of(&all))));

    // Concurrent clients, single leaves and batches of 3.
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for j in 0..6u64 {
                    let n = if j % 2 == 0 { 1 } else { 3 };
                    let sent: Vec<Hash> =
                        (0..n).map(|k| leaf(1000 + t * 100 + j * 10 + k)).collect();
                    let body = if n == 1 {
                        json!({"leaf": hex(&sent[0])})
                    } else {
                        json!({"leaves": sent.iter().map(|l| hex(l)).collect::<Vec<_>>()})
                    };
                    let (index, count, root) = ack(post(addr, &body).await);
                    assert_eq!(count, n);
                    acks.push((index, sent, root));
                }
                acks
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    acks.sort_by_key(|a| a.0);
    // Distinct, contiguous ranges right after the 12 leaves above.
    for (index, sent, _) in &acks {
        assert_eq!(
            *index,
            all.len() as u64,
            "index ranges overlap or leave a gap"
        );
        all.extend(sent);
    }
    assert_eq!(all.len(), 12 + 8 * (3 + 3 * 3)); // 8 tasks: 3 single leaves, 3 batches of 3
    // Each answer's root is the root of the tree up to its own leaves.
    for (index, sent, root) in &acks {
        let end = *index as usize + sent.len();
        assert_eq!(
            root,
            &hex(&root_of(&all[..end])),
            "root of insert at {index}"
        );
    }

    let size = all.len() as u64;
    let root = root_of(&all);
    assert_eq!(
        get(addr, "/root").await,
        (200, json!({"size": size, "root": hex(&root)}))
    );

    // Proofs verify against the root they come with, which is the tree's.
    for i in [0, 1, 7, 11, 12, 40, size - 1] {
        let (status, body) = get(addr, &format!("/proof/{i}")).await;
        assert_eq!(status, 200, "proof {i}: {body}");
        assert_eq!(body["index"], json!(i));
        assert_eq!(body["size"], json!(size));
        assert_eq!(body["root"], json!(hex(&root)));
        assert_eq!(body["leaf"], json!(hex(&all[i as usize])));
        let served_root: Hash = unhex(body["root"].as_str().unwrap()).try_into().unwrap();
        let proof = Proof::from_bytes(&unhex(body["proof"].as_str().unwrap())).unwrap();
        assert_eq!(proof.leaf_index(), i);
        assert_eq!(proof.leaf(), all[i as usize]);
        proof.verify_at(&Blake3, &served_root, size).unwrap();
    }

    // Out of range: 404; not an index: 400.
    for path in [format!("/proof/{size}"), format!("/proof/{}", u64::MAX)] {
        let (status, body) = get(addr, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("no leaf"),
            "{body}"
        );
    }
    for path in [
        "/proof/abc",
        "/proof/-1",
        "/proof/1.5",
        "/proof/18446744073709551616",
    ] {
        let (status, body) = get(addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("index"), "{body}");
    }

    // Bad input: 400 with a message naming what was wrong, nothing inserted.
    let good = hex(&leaf(1));
    let max = tree.max_batch();
    let too_many = json!({"leaves": vec![good.clone(); max as usize + 1]});
    let bad_inputs = [
        (
            json!({"leaf": format!("zz{}", &good[2..])}),
            "'z' at offset 0 is not a hex digit",
        ),
        (json!({"leaf": &good[..62]}), "62 hex digits, a leaf is 64"),
        (json!({"leaf": format!("{good}00")}), "66 hex digits"),
        (json!({"leaf": ""}), "0 hex digits"),
        (json!({"leaves": []}), "leaves: empty list"),
        (json!({"leaves": [good, "12"]}), "leaves[1]: 2 hex digits"),
        (
            json!({"leaves": [good, format!("{}g", &good[1..])]}),
            "leaves[1]: 'g' at offset 63",
        ),
        (json!({"leaf": good, "leaves": [good]}), "exactly one of"),
        (json!({}), "exactly one of"),
        (json!({"leef": good}), "unknown field `leef`"),
        (json!({"leaf": 5}), "invalid JSON body"),
        (
            too_many,
            &format!("{} leaves, at most {max} per request", max + 1),
        ),
    ];
    for (body, expect) in bad_inputs {
        let (status, answer) = post(addr, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(expect), "{msg:?} does not say {expect:?}");
    }
    let (status, answer) = request(addr, "POST", "/leaves", "not json").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body")
    );
    assert_eq!(tree.size(), size);
    assert_eq!(
        get(addr, "/root").await,
        (200, json!({"size": size, "root": hex(&root)}))
    );

    // A full batch fits in one request.
    all.extend((0..max).map(|i| leaf(1 << 32 | i)));
    let body = json!({"leaves": all[size as usize..].iter().map(|l| hex(l)).collect::<Vec<_>>()});
    let root = root_of(&all);
    assert_eq!(ack(post(addr, &body).await), (size, max, hex(&root)));
    let size = all.len() as u64;

    // Shutdown closes the tree; everything acknowledged is on disk.
    server.shutdown().await;
    assert!(matches!(
        tree.insert(leaf(0)).await,
        Err(ringtree::Error::Closed)
    ));
    let reopened = service::Tree::open(Config::new(dir.path())).await.unwrap();
    assert_eq!(reopened.size(), size);
    assert_eq!(reopened.root(), Some(root));
    reopened.close().await.unwrap();
}

/// With a manual flush policy nothing syncs unless asked: a POST must wait
/// for its durability, and a read shows only the durable tree (without
/// the leaf, until a flush makes it durable) and waits for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_only_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path()).flush(FlushPolicy::Manual);
    let tree = service::Tree::open(config).await.unwrap();
    let server = start(tree.clone()).await;
    let addr = server.addr;

    let pending = tokio::spawn(async move { post(addr, &json!({"leaf": hex(&leaf(7))})).await });
    for _ in 0..500 {
        if tree.size() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tree.size(), 1, "the leaf is in the tree");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "answered before the leaf was durable"
    );
    assert!(tree.metrics().durable_lag_bytes > 0);

    // A read publishes only durable state, at once: not the leaf yet.
    assert_eq!(
        get(addr, "/root").await,
        (200, json!({"size": 0, "root": null}))
    );
    assert_eq!(get(addr, "/proof/0").await.0, 404);
    assert!(!pending.is_finished());
    // A flush makes it durable: the POST is answered, reads show it.
    tree.flush().await.unwrap();
    assert_eq!(
        get(addr, "/root").await,
        (200, json!({"size": 1, "root": hex(&leaf(7))}))
    );
    assert_eq!(tree.metrics().durable_lag_bytes, 0);
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the POST is answered once durable")
        .unwrap();
    assert_eq!(ack(answer), (0, 1, hex(&leaf(7))));

    server.shutdown().await;
    let reopened = service::Tree::open(Config::new(dir.path())).await.unwrap();
    assert_eq!(reopened.size(), 1);
    reopened.close().await.unwrap();
}
