package dev.singtome.client;

import java.net.URI;
import java.nio.file.Path;
import java.util.Map;
import java.util.Optional;

/**
 * Where the pipeline is: Kafka bootstrap servers, the topic prefix, the S3 bucket (and endpoint,
 * for an S3 server other than Amazon's), the folder {@code singtome schemas export} wrote, and the
 * consumer group this backend reads results with. In Spring Boot, bind these from
 * {@code application.yml} instead of {@link #fromEnv()}.
 */
public record SingtomeConfig(
        String bootstrapServers,
        String topicPrefix,
        String bucket,
        Optional<URI> s3Endpoint,
        String region,
        Path schemaDir,
        String groupId) {

    /** The same variables the Python side reads ({@code singtome stack env} prints them). */
    public static SingtomeConfig fromEnv() {
        return fromEnv(System.getenv());
    }

    static SingtomeConfig fromEnv(Map<String, String> env) {
        String brokers = env.getOrDefault("SINGTOME_BROKER_URL", "kafka://127.0.0.1:19092");
        return new SingtomeConfig(
                bootstrapServers(brokers),
                env.getOrDefault("SINGTOME_TOPIC_PREFIX", ""),
                env.getOrDefault("SINGTOME_S3_BUCKET", "singtome"),
                Optional.ofNullable(env.get("AWS_ENDPOINT_URL_S3")).map(URI::create),
                env.getOrDefault("AWS_DEFAULT_REGION", "us-east-1"),
                Path.of(required(env, "SINGTOME_SCHEMA_DIR")),
                env.getOrDefault("SINGTOME_CLIENT_GROUP", "singtome-backend"));
    }

    /** faust's {@code kafka://a:9092;kafka://b:9092} form, or plain {@code a:9092,b:9092}. */
    static String bootstrapServers(String url) {
        StringBuilder out = new StringBuilder();
        for (String part : url.replace(';', ',').split(",")) {
            String server = part.strip();
            int scheme = server.indexOf("://");
            if (scheme >= 0) {
                server = server.substring(scheme + 3);
            }
            if (!server.isEmpty()) {
                out.append(out.length() == 0 ? "" : ",").append(server);
            }
        }
        return out.toString();
    }

    private static String required(Map<String, String> env, String name) {
        String value = env.get(name);
        if (value == null || value.isBlank()) {
            throw new IllegalStateException(
                    name + " is not set: run `singtome schemas export DIR` and point it at DIR");
        }
        return value;
    }

    /** The name of a topic on the broker. */
    public String topic(String name) {
        return topicPrefix + name;
    }
}
