// A real, single OpenSearch 2.19 node for the logging tests (scripts/opensearch.sh).
//
// The OpenSearch distribution archive is not on any registry reachable here, but its
// modules are on Maven Central: the server (org.opensearch:opensearch) and the plugins
// transport-netty4 (HTTP and transport), lang-painless and analysis-common. This starts
// org.opensearch.node.Node with those plugin classes on the classpath -- the same thing
// OpenSearch's own test framework does with MockNode -- instead of loading them from a
// plugins/ directory. It is the real server: the same mapping, indexing and query code
// as a packaged node. What it lacks is every plugin not listed here (notably the Index
// State Management plugin and the security plugin).
//
//   java -cp 'lib/*:classes' TestNode HOME HTTP_PORT TRANSPORT_PORT
//
// Binds to 127.0.0.1 only, single-node discovery, no security. Stops cleanly on SIGTERM.
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

public final class TestNode {
    /** Node's constructor that takes classpath plugins is protected; MockNode does the same. */
    static final class ClasspathPluginsNode extends Node {
        ClasspathPluginsNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: TestNode HOME HTTP_PORT TRANSPORT_PORT");
            System.exit(2);
        }
        Path home = Paths.get(args[0]).toAbsolutePath();
        Path config = home.resolve("config");
        Files.createDirectories(config);
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "lapseguard-logging-test")
            .put("node.name", "test-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[1])
            .put("transport.port", args[2])
            .put("discovery.type", "single-node")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // No vm.max_map_count requirement on the test machine (the bootstrap checks,
            // which would insist on it, are not run here; production sets it: see
            // docs/logging.md).
            .put("node.store.allow_mmap", false)
            // A small test machine: don't go read-only when its disk is fairly full.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", true)
            .build();
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("test-node");
        LogConfigurator.configureWithoutConfig(settings);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), config, () -> "test-node");
        List<Class<? extends Plugin>> plugins = List.of(Netty4Plugin.class, PainlessPlugin.class, CommonAnalysisPlugin.class);
        Node node = new ClasspathPluginsNode(env, plugins);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "test-node-shutdown"));
        node.start();
        System.out.println("[test-node] started: http://127.0.0.1:" + args[1]);
        stopped.await();
    }
}
