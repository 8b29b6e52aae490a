package ai.iheard.beam.kafka;

import java.util.Collections;
import java.util.Map;
import org.apache.beam.sdk.expansion.ExternalTransformRegistrar;
import org.apache.beam.sdk.io.kafka.IheardaiExternalRead;
import org.apache.beam.sdk.io.kafka.KafkaIO;
import org.apache.beam.sdk.transforms.ExternalTransformBuilder;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.values.PBegin;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.joda.time.Duration;

/**
 * Python's ReadFromKafka (with metadata, CreateTime) under our own URN, with one change: a partition
 * that has delivered no record since the reader started counts as idle once it has been caught up
 * for {@code idle_partition_timeout_ms}, so one quiet partition no longer holds the job's watermark
 * at the minimum (see {@link IdlePartitionCreateTimePolicy}). The payload is ReadFromKafka's plus
 * {@code idle_partition_timeout_ms}; io_connectors/kafka.py sends it.
 */
public final class IdleAwareKafkaRead implements ExternalTransformRegistrar {
  public static final String URN = "beam:transform:ai.iheard:kafka_read_with_metadata_idle_partitions:v1";

  @Override
  public Map<String, Class<? extends ExternalTransformBuilder<?, ?, ?>>> knownBuilders() {
    return Collections.singletonMap(URN, Builder.class);
  }

  /** KafkaIO's external configuration plus the idle timeout; the expansion service calls the setters. */
  public static class Configuration extends KafkaIO.Read.External.Configuration {
    private Long idlePartitionTimeoutMs;
    private String timestampPolicy;
    private String keyDeserializer;
    private String valueDeserializer;

    public void setIdlePartitionTimeoutMs(Long idlePartitionTimeoutMs) {
      this.idlePartitionTimeoutMs = idlePartitionTimeoutMs;
    }

    @Override
    public void setTimestampPolicy(String timestampPolicy) {
      super.setTimestampPolicy(timestampPolicy);
      this.timestampPolicy = timestampPolicy;
    }

    @Override
    public void setKeyDeserializer(String keyDeserializer) {
      super.setKeyDeserializer(keyDeserializer);
      this.keyDeserializer = keyDeserializer;
    }

    @Override
    public void setValueDeserializer(String valueDeserializer) {
      super.setValueDeserializer(valueDeserializer);
      this.valueDeserializer = valueDeserializer;
    }
  }

  public static class Builder
      implements ExternalTransformBuilder<Configuration, PBegin, PCollection<Row>> {
    @Override
    public PTransform<PBegin, PCollection<Row>> buildExternal(Configuration config) {
      String bytes = ByteArrayDeserializer.class.getName();
      if (!bytes.equals(config.keyDeserializer) || !bytes.equals(config.valueDeserializer)) {
        throw new IllegalArgumentException(
            URN + " reads keys and values as byte[]: key_deserializer and value_deserializer must be "
                + bytes + ", got " + config.keyDeserializer + " / " + config.valueDeserializer);
      }
      if (!"CreateTime".equals(config.timestampPolicy)) {
        throw new IllegalArgumentException(
            URN + " changes the CreateTime policy only; got timestamp_policy=" + config.timestampPolicy);
      }
      Long timeoutMs = config.idlePartitionTimeoutMs;
      if (timeoutMs == null || timeoutMs < 0) {
        throw new IllegalArgumentException(
            "idle_partition_timeout_ms must be given and >= 0, got " + timeoutMs);
      }
      Duration timeout = Duration.millis(timeoutMs);
      return IheardaiExternalRead.withMetadata(
          config,
          read -> read.withTimestampPolicyFactory(
              (partition, previousWatermark) ->
                  new IdlePartitionCreateTimePolicy(timeout, previousWatermark)));
    }
  }
}
