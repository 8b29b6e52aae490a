package ai.iheard.beam.kafka;

import java.util.Optional;
import java.util.function.Supplier;
import org.apache.beam.sdk.io.kafka.KafkaRecord;
import org.apache.beam.sdk.io.kafka.TimestampPolicy;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.joda.time.Duration;
import org.joda.time.Instant;

/**
 * Kafka CreateTime as event time, as Beam's {@code withCreateTime(Duration.ZERO)}
 * (CustomTimestampPolicyWithLimitedDelay), with one difference.
 *
 * <p>Beam's policy moves a caught-up partition's watermark to the time of its last backlog check only
 * once the partition has delivered a record with a positive timestamp since the reader started (or
 * restored such a watermark from a checkpoint). A partition with no record since the job started
 * stays at the minimum, and the job's watermark is the minimum over partitions: one quiet partition
 * of any input topic keeps every session and hour from closing (apache/beam PR #40176 describes it).
 * Here a partition with no record counts as idle too, once it has been caught up (backlog 0) and the
 * reader has run for {@code idleTimeout}; the wait lets records that are produced with older event
 * times right after a job starts (a backfill started with it) still be on time.
 *
 * <p>Otherwise as Beam's: the watermark is the newest record timestamp seen, the clock when a record
 * is stamped in the future, and the backlog check time when the partition is caught up and idle. It
 * never moves back.
 */
public final class IdlePartitionCreateTimePolicy extends TimestampPolicy<byte[], byte[]> {
  private final Duration idleTimeout;
  private final Supplier<Instant> clock;
  private final Instant startedAt;
  private Instant maxEventTimestamp;
  private Instant watermark = BoundedWindow.TIMESTAMP_MIN_VALUE;

  public IdlePartitionCreateTimePolicy(Duration idleTimeout, Optional<Instant> previousWatermark) {
    this(idleTimeout, previousWatermark, Instant::now);
  }

  IdlePartitionCreateTimePolicy(
      Duration idleTimeout, Optional<Instant> previousWatermark, Supplier<Instant> clock) {
    this.idleTimeout = idleTimeout;
    this.clock = clock;
    this.startedAt = clock.get();
    this.maxEventTimestamp = previousWatermark.orElse(BoundedWindow.TIMESTAMP_MIN_VALUE);
  }

  @Override
  public Instant getTimestampForRecord(PartitionContext ctx, KafkaRecord<byte[], byte[]> record) {
    Instant ts = new Instant(record.getTimestamp());
    if (ts.isAfter(maxEventTimestamp)) {
      maxEventTimestamp = ts;
    }
    return ts;
  }

  @Override
  public Instant getWatermark(PartitionContext ctx) {
    Instant now = clock.get();
    Instant next;
    if (maxEventTimestamp.isAfter(now)) {
      next = now;
    } else if (ctx.getMessageBacklog() == 0
        && ctx.getBacklogCheckTime() != null
        && ctx.getBacklogCheckTime().isAfter(maxEventTimestamp)
        && (maxEventTimestamp.getMillis() > 0 || !now.isBefore(startedAt.plus(idleTimeout)))) {
      next = ctx.getBacklogCheckTime();
    } else {
      next = maxEventTimestamp;
    }
    if (next.isAfter(watermark)) {
      watermark = next;
    }
    return watermark;
  }
}
