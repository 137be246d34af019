"""Network plugin (placeholder): addresses, veth, forwarding and egress rules.

Until it is built (see the networking issue), every container has a network
namespace of its own with only ``lo`` up; that namespace and its loopback are
made by the isolation plugin. This module registers no hook yet.
"""
