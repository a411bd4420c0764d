package dev.singtome.client;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.core.checksums.RequestChecksumCalculation;
import software.amazon.awssdk.core.checksums.ResponseChecksumValidation;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.http.urlconnection.UrlConnectionHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;

/**
 * A job's uploads in S3, under {@code uploads/<job_id>/}: the only prefix of the bucket an event
 * for that job may name (the service's key policy refuses others as {@code forbidden_key}).
 */
public final class Uploads {
    private final S3Client s3;
    private final String bucket;

    /**
     * An S3 client for the configured bucket: Amazon S3 through the default credential chain, or
     * the S3 server {@code AWS_ENDPOINT_URL_S3} names (path-style addressing, and checksums only
     * where S3 requires them: S3-compatible servers reject some of the SDK's newer default ones).
     */
    public static S3Client s3Client(SingtomeConfig config) {
        var builder = S3Client.builder()
                .httpClient(UrlConnectionHttpClient.create())
                .region(Region.of(config.region()))
                .credentialsProvider(DefaultCredentialsProvider.builder().build());
        config.s3Endpoint().ifPresent(endpoint -> builder
                .endpointOverride(endpoint)
                .forcePathStyle(true)
                .requestChecksumCalculation(RequestChecksumCalculation.WHEN_REQUIRED)
                .responseChecksumValidation(ResponseChecksumValidation.WHEN_REQUIRED));
        return builder.build();
    }

    public Uploads(S3Client s3, String bucket) {
        this.s3 = s3;
        this.bucket = bucket;
    }

    /** Uploads the song; returns its key for {@code keys.song}. */
    public String putSong(String jobId, Path song) {
        String key = "uploads/" + jobId + "/song" + extension(song);
        s3.putObject(b -> b.bucket(bucket).key(key), RequestBody.fromFile(song));
        return key;
    }

    /** Uploads every file of a folder of voice recordings; returns the prefix for
     * {@code options.voice.dataset_key}. */
    public String putVoice(String jobId, Path folder) {
        String prefix = "uploads/" + jobId + "/voice/";
        List<Path> takes;
        try (Stream<Path> files = Files.list(folder)) {
            takes = files.filter(Files::isRegularFile).sorted().toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (takes.isEmpty()) {
            throw new IllegalArgumentException("no recordings in " + folder);
        }
        for (Path take : takes) {
            String key = prefix + take.getFileName();
            s3.putObject(b -> b.bucket(bucket).key(key), RequestBody.fromFile(take));
        }
        return prefix;
    }

    public byte[] get(String key) {
        return s3.getObjectAsBytes(b -> b.bucket(bucket).key(key)).asByteArray();
    }

    private static String extension(Path file) {
        String name = file.getFileName().toString();
        int dot = name.lastIndexOf('.');
        return dot >= 0 ? name.substring(dot).toLowerCase() : "";
    }
}
