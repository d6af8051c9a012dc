"""What the command line does besides serving: building the sandbox images from their recipes
(`insien image build`, the test suite's and the benchmarks' set-up). The server never imports
it; it talks to the Docker Engine directly, outside any runtime."""
