package dev.singtome.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;
import software.amazon.awssdk.services.s3.S3Client;

/**
 * Against a running stack and four real workers (tests/integration/test_stages.py starts them
 * and this test): the environment names the broker, the bucket, the exported schemas, and a
 * generated song and voice dataset (SINGTOME_JAVA_SONG, SINGTOME_JAVA_VOICE_DIR). Without a stack
 * (SINGTOME_SCHEMA_DIR unset: scripts/setup.sh fetching what Maven needs) the class is skipped;
 * the pytest that runs it requires two tests run and none skipped.
 */
@EnabledIfEnvironmentVariable(named = "SINGTOME_SCHEMA_DIR", matches = ".+")
class FullJobTest {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static SingtomeConfig config;
    private static EventSchemas schemas;
    private static S3Client s3;
    private static Uploads uploads;
    private static SingtomeClient client;

    @BeforeAll
    static void connect() {
        config = SingtomeConfig.fromEnv();
        schemas = new EventSchemas(config.schemaDir(), JSON);
        s3 = Uploads.s3Client(config);
        uploads = new Uploads(s3, config.bucket());
        client = new SingtomeClient(config, schemas, JSON);
    }

    @AfterAll
    static void close() {
        client.close();
        s3.close();
    }

    private static String jobId(String tag) {
        return "java-" + tag + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    private static Path env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalStateException(name + " is not set");
        }
        return Path.of(value);
    }

    @Test
    void aCoverFromTheJvmIsReadyAndDownloadable() throws Exception {
        String jobId = jobId("cover");
        String songKey = uploads.putSong(jobId, env("SINGTOME_JAVA_SONG"));
        String voiceKey = uploads.putVoice(jobId, env("SINGTOME_JAVA_VOICE_DIR"));
        ObjectNode event = client.songUploaded(jobId, songKey, voiceKey);
        ((ObjectNode) event.path("options")).putObject("output").put("format", "mp3");
        assertEquals(List.of(), schemas.problems(SingtomeClient.SONG_UPLOADED, event));
        client.publish(event);

        List<JsonNode> seen = new ArrayList<>();
        JobOutcome outcome = client.awaitOutcome(jobId, Duration.ofMinutes(10), seen::add);
        assertTrue(outcome.ready(), () -> "the job failed: " + outcome.event());
        JsonNode ready = outcome.event();
        assertEquals(jobId, ready.path("job_id").asText());
        assertEquals("mp3", ready.path("format").asText());
        List<String> stages = new ArrayList<>();
        ready.path("history").forEach(record -> stages.add(record.path("stage").asText()));
        assertEquals(List.of("separator", "trainer", "converter", "mixer"), stages);
        assertFalse(seen.isEmpty(), "job.progress events arrived (each checked against its schema)");

        HttpResponse<byte[]> download = HttpClient.newHttpClient().send(
                HttpRequest.newBuilder(URI.create(ready.path("download_url").asText())).GET().build(),
                HttpResponse.BodyHandlers.ofByteArray());
        assertEquals(200, download.statusCode());
        byte[] stored = uploads.get(ready.path("track_key").asText());
        assertTrue(stored.length > 1000, "a real encoded track");
        assertArrayEquals(stored, download.body(), "the presigned URL serves the stored track");
    }

    @Test
    void aMalformedEventFromJavaIsAnsweredWithTrackFailed() throws Exception {
        String jobId = jobId("bad");
        ObjectNode event = client.songUploaded(jobId, "uploads/" + jobId + "/song.wav", "unused");
        event.remove("keys"); // no song
        ((ObjectNode) event.path("options")).remove("voice"); // and no voice

        List<String> problems = schemas.problems(SingtomeClient.SONG_UPLOADED, event);
        assertFalse(problems.isEmpty(), "the exported schema refuses it");
        assertThrows(InvalidEventException.class, () -> client.publish(event), "publish() checks");
        client.publishUnchecked(jobId, JSON.writeValueAsBytes(event));

        JobOutcome outcome = client.awaitOutcome(jobId, Duration.ofMinutes(3), progress -> {});
        assertEquals(SingtomeClient.TRACK_FAILED, outcome.topic());
        JsonNode failed = outcome.event();
        assertEquals("malformed_event", failed.path("code").asText());
        assertEquals("separator", failed.path("stage").asText());
        assertFalse(failed.path("retriable").asBoolean());
        assertEquals(jobId, failed.path("job_id").asText());
    }
}
