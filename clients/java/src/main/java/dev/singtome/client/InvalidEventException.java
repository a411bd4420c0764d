package dev.singtome.client;

import java.util.List;

/** An event that does not conform to its topic's exported JSON Schema. */
public final class InvalidEventException extends RuntimeException {
    private final transient List<String> problems;

    public InvalidEventException(String topic, List<String> problems) {
        super("invalid " + topic + " event: " + String.join("; ", problems));
        this.problems = List.copyOf(problems);
    }

    public List<String> problems() {
        return problems;
    }
}
