"""The reply of /lb.example.v1.Echo/Whoami, decoded by hand (no generated
code in the stock-client tests): shared by grpclb_client.py and
xds_client.py."""


def decode_reply(data):
    """Fields 1 (instance_id) and 2 (lb_token) of a WhoamiReply."""
    fields = {}
    i = 0
    while i < len(data):
        key = data[i]
        i += 1
        if key & 7 != 2:
            raise ValueError("unexpected wire type in WhoamiReply")
        length = 0
        shift = 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[key >> 3] = data[i:i + length].decode()
        i += length
    return fields.get(1, ""), fields.get(2, "")
