//! Job-queue throughput of a RabbitMQ cluster (a benchmark, not a test): publish with
//! confirms + consume with manual ack, end to end, on quorum queues shaped like the job
//! queue (same arguments, same persistent JSON job messages, same confirm/ack discipline
//! as the backend's relay and the workers), once per replica count, in one run:
//!
//!   cargo run --release -p lapseguard-core --example amqp_throughput -- \
//!       --url amqp://user:pass@host:5672/%2f --messages 20000 --replicas 1,3
//!
//! Each round declares `<prefix>.r<N>` with `x-quorum-initial-group-size = N`, starts a
//! consumer (prefetch `--prefetch`, one ack per message), publishes `--messages` messages
//! keeping at most `--window` unconfirmed, waits until every message was consumed and
//! deletes the queue. Prints one JSON line per round (messages/s, elapsed, confirm and
//! ack counts) and a comparison line. Used by scripts/e2e-cluster.sh ("RabbitMQ 1 vs 3").
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapseguard_core::job::{JOB_MESSAGE_VERSION, JobMessage};
use lapseguard_core::queue::{connect, job_properties};

#[derive(Parser)]
#[command(
    about = "Publish-with-confirms + consume-with-ack throughput per quorum-queue replica count"
)]
struct Args {
    /// AMQP URL of the cluster (through its Service: connections spread over the nodes)
    #[arg(long, env = "LAPSEGUARD_AMQP_URL")]
    url: String,
    /// Messages per round
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Replica counts to compare (x-quorum-initial-group-size), one round each
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<u32>,
    /// Unconfirmed publishes in flight at most
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Consumer prefetch
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Queue name prefix (a bench queue each round, deleted afterwards)
    #[arg(long, default_value = "lapseguard-bench.throughput")]
    prefix: String,
    /// Give up on a round after this many seconds
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

fn job(i: usize) -> JobMessage {
    JobMessage {
        version: JOB_MESSAGE_VERSION,
        job_id: uuid::Uuid::now_v7(),
        image_id: uuid::Uuid::now_v7(),
        project: "bench".into(),
        camera: uuid::Uuid::nil(),
        input_bucket: "lapseguard-input".into(),
        input_key: format!(
            "bench/00000000-0000-0000-0000-000000000000/2026/11/26/20261126T000000.{:03}Z_{i:016x}.jpg",
            i % 1000
        ),
        sha256: format!("{i:064x}"),
        content_type: "image/jpeg".into(),
    }
}

async fn round(args: &Args, replicas: u32) -> anyhow::Result<(f64, Duration)> {
    let queue = format!("{}.r{replicas}", args.prefix);
    let mut qargs = FieldTable::default();
    qargs.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    qargs.insert(
        ShortString::from("x-quorum-initial-group-size"),
        AMQPValue::LongInt(replicas as i32),
    );
    qargs.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(20),
    );

    let pub_conn = connect(&args.url, "bench-publisher").await?;
    let sub_conn = connect(&args.url, "bench-consumer").await?;
    let pch = pub_conn.create_channel().await?;
    let sch = sub_conn.create_channel().await?;
    // start from an empty queue
    let _ = pch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let pch = pub_conn.create_channel().await?;
    pch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        qargs,
    )
    .await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    sch.basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = sch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let n = args.messages;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut got = 0usize;
        while got < n {
            match consumer.next().await {
                Some(Ok(d)) => {
                    d.ack(BasicAckOptions::default()).await?;
                    got += 1;
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => anyhow::bail!("consumer closed after {got} messages"),
            }
        }
        Ok::<usize, anyhow::Error>(got)
    });
    let mut in_flight = VecDeque::with_capacity(args.window);
    let mut nacked = 0usize;
    for i in 0..n {
        let j = job(i);
        let confirm = pch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &j.to_json(),
                job_properties(&j),
            )
            .await?;
        in_flight.push_back(confirm);
        if in_flight.len() >= args.window
            && let Some(c) = in_flight.pop_front()
            && !c.await?.is_ack()
        {
            nacked += 1;
        }
    }
    for c in in_flight {
        if !c.await?.is_ack() {
            nacked += 1;
        }
    }
    let consumed = tokio::time::timeout(Duration::from_secs(args.timeout_secs), consume)
        .await
        .map_err(|_| anyhow::anyhow!("round r{replicas} timed out"))???;
    let elapsed = started.elapsed();
    anyhow::ensure!(nacked == 0, "{nacked} publishes were nacked");
    anyhow::ensure!(consumed == n, "consumed {consumed} of {n}");
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = pub_conn.close(200, "done".into()).await;
    let _ = sub_conn.close(200, "done".into()).await;
    Ok((n as f64 / elapsed.as_secs_f64(), elapsed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results = Vec::new();
    for &r in &args.replicas {
        eprintln!("[amqp_throughput] replicas={r}: {} messages", args.messages);
        let (rate, elapsed) = round(&args, r).await?;
        println!(
            "{{\"replicas\":{r},\"messages\":{},\"elapsed_s\":{:.2},\"msgs_per_s\":{rate:.0}}}",
            args.messages,
            elapsed.as_secs_f64()
        );
        results.push((r, rate));
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        println!(
            "{{\"compare\":\"r{} vs r{}\",\"ratio\":{:.2}}}",
            last.0,
            first.0,
            last.1 / first.1
        );
    }
    Ok(())
}
