package dev.singtome.client;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Consumer;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes {@code song.uploaded} and follows a job to its {@code track.ready} or
 * {@code track.failed}. Every event sent is checked against the exported schema first, every event
 * received is checked on arrival: a mismatch is an {@link InvalidEventException}, never silence.
 * The Kafka message key is always the job id (ordering per job).
 */
public final class SingtomeClient implements AutoCloseable {
    public static final String SONG_UPLOADED = "song.uploaded";
    public static final String TRACK_READY = "track.ready";
    public static final String TRACK_FAILED = "track.failed";
    public static final String JOB_PROGRESS = "job.progress";

    private final SingtomeConfig config;
    private final EventSchemas schemas;
    private final ObjectMapper json;
    private final KafkaProducer<String, byte[]> producer;

    public SingtomeClient(SingtomeConfig config, EventSchemas schemas, ObjectMapper json) {
        this.config = config;
        this.schemas = schemas;
        this.json = json;
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, config.bootstrapServers());
        props.put(ProducerConfig.ACKS_CONFIG, "all"); // the service's guarantees start at the ack
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        this.producer = new KafkaProducer<>(props);
    }

    /**
     * A {@code song.uploaded} event for a song and a voice dataset already uploaded (see
     * {@link Uploads}); set more of {@code options} on the returned node before publishing.
     */
    public ObjectNode songUploaded(String jobId, String songKey, String voiceDatasetKey) {
        ObjectNode event = json.createObjectNode();
        event.put("schema_version", schemas.schemaVersion());
        event.put("event_id", UUID.randomUUID().toString().replace("-", ""));
        event.put("job_id", jobId);
        event.put("occurred_at", Instant.now().toString());
        event.putObject("keys").put("song", songKey);
        event.putObject("options").putObject("voice").put("dataset_key", voiceDatasetKey);
        return event;
    }

    /** Validates and publishes the event, keyed by its job id; returns once the broker acked it. */
    public void publish(ObjectNode event) {
        schemas.check(SONG_UPLOADED, event);
        send(event.path("job_id").asText(), bytes(event));
    }

    /**
     * Publishes bytes as they are, unchecked: what a broken producer does. The service answers such
     * an event with {@code track.failed} (and keeps the original in {@code song.uploaded.dlq}).
     */
    public void publishUnchecked(String jobId, byte[] payload) {
        send(jobId, payload);
    }

    private void send(String jobId, byte[] payload) {
        try {
            producer.send(new ProducerRecord<>(config.topic(SONG_UPLOADED), jobId, payload))
                    .get(60, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while publishing", e);
        } catch (ExecutionException | TimeoutException e) {
            throw new IllegalStateException("the broker did not acknowledge " + jobId, e);
        }
    }

    /**
     * Reads {@code track.ready}, {@code track.failed} and {@code job.progress} in this backend's
     * consumer group until the job is answered or {@code timeout} passes. Events of other jobs are
     * checked and skipped (a real backend would dispatch them instead).
     */
    public JobOutcome awaitOutcome(String jobId, Duration timeout, Consumer<JsonNode> onProgress) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, config.bootstrapServers());
        props.put(ConsumerConfig.GROUP_ID_CONFIG, config.groupId());
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        List<JsonNode> progress = new ArrayList<>();
        Instant deadline = Instant.now().plus(timeout);
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(props)) {
            consumer.subscribe(List.of(
                    config.topic(TRACK_READY), config.topic(TRACK_FAILED), config.topic(JOB_PROGRESS)));
            while (Instant.now().isBefore(deadline)) {
                for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                    String topic = record.topic().substring(config.topicPrefix().length());
                    JsonNode event = read(record.value());
                    schemas.check(topic, event);
                    if (!jobId.equals(event.path("job_id").asText())) {
                        continue;
                    }
                    if (JOB_PROGRESS.equals(topic)) {
                        progress.add(event);
                        onProgress.accept(event);
                    } else {
                        consumer.commitSync();
                        return new JobOutcome(topic, event, List.copyOf(progress));
                    }
                }
            }
        }
        throw new IllegalStateException("job " + jobId + " was not answered within " + timeout);
    }

    private JsonNode read(byte[] value) {
        try {
            return json.readTree(value);
        } catch (IOException e) {
            throw new InvalidEventException("(unparsable)", List.of(e.getMessage()));
        }
    }

    private byte[] bytes(JsonNode event) {
        try {
            return json.writeValueAsBytes(event);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(e);
        }
    }

    @Override
    public void close() {
        producer.close(Duration.ofSeconds(10));
    }
}
