"""The seed's example in Python: `INSIEN_API_KEY=... python hello.py` (and INSIEN_URL, if the
server is not at http://localhost:3000)."""

import os

from insien_sandbox import Sandbox

# Initialize with just your API key
sandbox = Sandbox(api_key=os.environ["INSIEN_API_KEY"])

# Write a file
sandbox.write_file("hello.js", "console.log('Hello!');")

# Run a command
result = sandbox.run_command("node", ["--version"])
print(result.stdout)

# Read a file
content = sandbox.get_file("hello.js")
print(content)

# Get terminal output
output = sandbox.run_command("ls", ["-la"])
print(output.stdout)

# Cleanup when done
sandbox.destroy()
sandbox.close()
