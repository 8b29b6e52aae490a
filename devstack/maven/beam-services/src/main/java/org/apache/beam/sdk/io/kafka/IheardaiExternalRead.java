package org.apache.beam.sdk.io.kafka;

import java.util.function.UnaryOperator;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.values.PBegin;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/**
 * The one class of ours in KafkaIO's package: it builds the read exactly as KafkaIO's own
 * {@code kafka_read_with_metadata} registrar does ({@code Read.Builder.setupExternalBuilder} is
 * package-private), then lets the caller change it (ai.iheard.beam.kafka.IdleAwareKafkaRead sets its
 * timestamp policy) before wrapping it as rows with metadata, which is what Python's ReadFromKafka
 * (with_metadata=True) expects. Beam 2.62; pinned by devstack/versions.py.
 */
public final class IheardaiExternalRead {
  private IheardaiExternalRead() {}

  public static PTransform<PBegin, PCollection<Row>> withMetadata(
      KafkaIO.Read.External.Configuration config,
      UnaryOperator<KafkaIO.Read<byte[], byte[]>> customize) {
    KafkaIO.Read.Builder<byte[], byte[]> builder = new AutoValue_KafkaIO_Read.Builder<>();
    KafkaIO.Read.Builder.setupExternalBuilder(builder, config);
    return customize.apply(builder.build()).externalWithMetadata();
  }
}
