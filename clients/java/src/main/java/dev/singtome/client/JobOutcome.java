package dev.singtome.client;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;

/**
 * How a job ended: {@code topic} is {@code track.ready} or {@code track.failed}, {@code event}
 * the answer (validated against its schema), {@code progress} the job.progress events seen before.
 */
public record JobOutcome(String topic, JsonNode event, List<JsonNode> progress) {
    public boolean ready() {
        return "track.ready".equals(topic);
    }
}
