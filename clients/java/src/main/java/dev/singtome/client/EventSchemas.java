package dev.singtome.client;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.networknt.schema.JsonSchema;
import com.networknt.schema.JsonSchemaFactory;
import com.networknt.schema.SchemaValidatorsConfig;
import com.networknt.schema.SpecVersion;
import com.networknt.schema.ValidationMessage;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;

/**
 * The JSON Schemas of the topics, read from the folder {@code singtome schemas export} wrote
 * ({@code <topic>.schema.json} each, plus {@code asyncapi.json}). Never copied into this module:
 * export them from the service version you talk to.
 */
public final class EventSchemas {
    private static final String SUFFIX = ".schema.json";

    private final Map<String, JsonSchema> byTopic = new TreeMap<>();
    private final String schemaVersion;

    public EventSchemas(Path dir, ObjectMapper json) {
        JsonSchemaFactory factory = JsonSchemaFactory.getInstance(SpecVersion.VersionFlag.V202012);
        // Formats asserted, as the service does: "format": "date-time" must be one.
        SchemaValidatorsConfig config =
                SchemaValidatorsConfig.builder().formatAssertionsEnabled(true).build();
        try (Stream<Path> files = Files.list(dir)) {
            for (Path file : files.filter(f -> f.getFileName().toString().endsWith(SUFFIX)).toList()) {
                String name = file.getFileName().toString();
                String topic = name.substring(0, name.length() - SUFFIX.length());
                byTopic.put(topic, factory.getSchema(json.readTree(file.toFile()), config));
            }
            schemaVersion = json.readTree(dir.resolve("asyncapi.json").toFile())
                    .path("info").path("version").asText();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the exported schemas in " + dir, e);
        }
        if (byTopic.isEmpty() || schemaVersion.isEmpty()) {
            throw new IllegalStateException(dir + " holds no exported schemas");
        }
    }

    /** The schema version events are written in (the AsyncAPI document's info.version). */
    public String schemaVersion() {
        return schemaVersion;
    }

    /** What is wrong with {@code event} as an event of {@code topic}; empty when it conforms. */
    public List<String> problems(String topic, JsonNode event) {
        JsonSchema schema = byTopic.get(topic);
        if (schema == null) {
            throw new IllegalArgumentException("no schema for topic " + topic + " in " + byTopic.keySet());
        }
        return schema.validate(event).stream().map(ValidationMessage::getMessage).sorted().toList();
    }

    /** Throws {@link InvalidEventException} naming every problem when {@code event} does not conform. */
    public void check(String topic, JsonNode event) {
        List<String> problems = problems(topic, event);
        if (!problems.isEmpty()) {
            throw new InvalidEventException(topic, problems);
        }
    }
}
